"""Builds ``wacall.media._fastpath`` (cffi, API mode) from ``fastpath.c``; run by ``pip install`` through
``setup.py`` (``cffi_modules``), or by hand: ``python src/wacall/media/fastpath_build.py``."""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

CDEF = (HERE / "fastpath.h").read_text()

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("wacall.media._fastpath", (HERE / "fastpath.c").read_text(),
                      include_dirs=[str(HERE)], extra_compile_args=["-O2"], libraries=["m"])

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE.parent.parent), verbose=True)
