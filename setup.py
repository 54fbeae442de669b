"""Only the compiled parts live here (everything else is in pyproject.toml): cffi builds
``wacall.media._fastpath`` from ``src/wacall/media/fastpath.c`` and ``wacall.sip._sipscan`` from
``src/wacall/sip/sipscan.c`` at install time."""

from setuptools import setup

setup(cffi_modules=["src/wacall/media/fastpath_build.py:ffibuilder", "src/wacall/sip/sipscan_build.py:ffibuilder"])
