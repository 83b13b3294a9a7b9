"""Only for cffi: ``cffi_modules`` is a setuptools keyword.  Everything else
lives in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["src/build_engine.py:ffibuilder"])
