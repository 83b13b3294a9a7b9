"""cffi needs setup.py (``cffi_modules`` is a setuptools keyword); everything
else lives in pyproject.toml.

One addition: the engine's runner program (csrc/runner.c), linked next to
the extension as ``uidprobe/_runner``.  Probes are forked from that small
process, so their cost does not grow with the caller's memory.  If it cannot
be built, uidprobe still works, forking from the caller instead.
"""

import os
import runpy

from setuptools import setup
from setuptools.command.build_ext import build_ext


class BuildExtWithRunner(build_ext):
    def run(self) -> None:
        super().run()
        build = runpy.run_path(os.path.join("src", "build_engine.py"), run_name="uidprobe_build")
        target_dir = os.path.dirname(self.get_ext_fullpath("uidprobe._engine"))
        sources = [os.path.join("csrc", name) for name in ("runner.c", "engine.c", "steps.c")]
        try:
            objects = self.compiler.compile(
                sources,
                output_dir=self.build_temp,
                macros=build["detect_macros"](build["_hidden_from_env"]()),
                include_dirs=["csrc"],
            )
            self.compiler.link_executable(objects, "_runner", output_dir=target_dir)
        except Exception as e:  # a missing runner only costs speed
            self.warn(f"uidprobe: runner not built ({e}); probes will fork from the caller")


setup(
    cffi_modules=["src/build_engine.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtWithRunner},
)
