"""cffi needs setup.py (``cffi_modules`` is a setuptools keyword); everything
else lives in pyproject.toml.

One addition: the engine's runner program (csrc/runner.c), linked next to
the extension as ``uidprobe/_runner``.  Probes are forked from that small
process, so their cost does not grow with the caller's memory.  If it cannot
be built, uidprobe still works, forking from the caller instead.

The wheel is tagged ``cp39-abi3``: cffi compiles the engine against CPython's
limited API (it defines ``Py_LIMITED_API`` and setuptools names the file
``_engine.abi3.so``), so one wheel serves every CPython from 3.9 on.  The runner
is plain C and does not depend on the Python version at all.
"""

import os
import platform
import runpy
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext


class BuildExtWithRunner(build_ext):
    def run(self) -> None:
        super().run()
        build = runpy.run_path(os.path.join("src", "build_engine.py"), run_name="uidprobe_build")
        target_dir = os.path.dirname(self.get_ext_fullpath("uidprobe._engine"))
        sources = [os.path.join("csrc", name) for name in ("runner.c", *build["ENGINE_SOURCES"])]
        try:
            objects = self.compiler.compile(
                sources,
                output_dir=self.build_temp,
                macros=build["detect_macros"](build["hidden_from_env"]()),
                include_dirs=["csrc"],
            )
            self.compiler.link_executable(objects, "_runner", output_dir=target_dir, extra_postargs=build["LINK_ARGS"])
        except Exception as e:  # a missing runner only costs speed
            self.warn(f"uidprobe: runner not built ({e}); probes will fork from the caller")


def limited_api() -> bool:
    """True where cffi builds the engine for the limited API: CPython, except
    debug builds (no ``.abi3.so`` there) and free-threaded ones (no abi3 before 3.15)."""
    return (
        platform.python_implementation() == "CPython"
        and not hasattr(sys, "gettotalrefcount")
        and not sysconfig.get_config_var("Py_GIL_DISABLED")
    )


setup(
    cffi_modules=["src/build_engine.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtWithRunner},
    # The oldest CPython that requires-python admits (pyproject.toml).
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if limited_api() else {},
)
