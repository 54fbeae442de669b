"""Only the compiled media path lives here (everything else is in pyproject.toml): cffi builds
``wacall.media._fastpath`` from ``src/wacall/media/fastpath.c`` at install time."""

from setuptools import setup

setup(cffi_modules=["src/wacall/media/fastpath_build.py:ffibuilder"])
