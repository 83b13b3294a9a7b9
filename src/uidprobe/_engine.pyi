"""Type stub for the cffi-built engine (csrc/engine.c via src/build_engine.py)."""

from typing import Any

ffi: Any
lib: Any
