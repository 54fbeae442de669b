"""Only the compiled parts live here (everything else is in pyproject.toml): cffi builds
``wacall.media._fastpath`` from ``src/wacall/media/fastpath.c`` at install time, and setuptools the CPython
extensions ``wacall.sip._sipscan`` (the SIP scanner, which makes the parser's Python objects itself) from
``src/wacall/sip/sipscan.c`` and ``wacall.domain._sdpscan`` (the SDP scanner, likewise) from
``src/wacall/domain/sdpscan.c``."""

from setuptools import Extension, setup

setup(cffi_modules=["src/wacall/media/fastpath_build.py:ffibuilder"],
      ext_modules=[Extension("wacall.sip._sipscan", ["src/wacall/sip/sipscan.c"], extra_compile_args=["-O2"]),
                   Extension("wacall.domain._sdpscan", ["src/wacall/domain/sdpscan.c"], extra_compile_args=["-O2"])])
