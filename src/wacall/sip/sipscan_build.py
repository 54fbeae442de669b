"""Builds ``wacall.sip._sipscan`` (cffi, API mode) from ``sipscan.c``; run by ``pip install`` through
``setup.py`` (``cffi_modules``), or by hand: ``python src/wacall/sip/sipscan_build.py``."""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef((HERE / "sipscan.h").read_text())
ffibuilder.set_source("wacall.sip._sipscan", (HERE / "sipscan.c").read_text(),
                      include_dirs=[str(HERE)], extra_compile_args=["-O2"])

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE.parent.parent), verbose=True)
