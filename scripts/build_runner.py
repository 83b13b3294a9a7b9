#!/usr/bin/env python3
"""Build uidprobe's runner program with another compiler: another C library
(``musl-gcc``) or another architecture (``aarch64-linux-gnu-gcc``,
``i686-linux-gnu-gcc``, ``s390x-linux-gnu-gcc``); or the whole package.

    scripts/build_runner.py CC OUTPUT
    scripts/build_runner.py --package CC STAGE -I PYTHON_INCLUDE [-I ...]

The runner is every ``csrc/*.c`` but the test-only ``faults.c``, linked
statically (so qemu-user runs it without a foreign root), with the
``HAVE_*`` macros that ``src/build_engine.py``'s feature check finds with
*this* compiler, and -Wall -Wextra -Werror.  A compiler whose C library
carries no Linux uapi headers (Debian's musl-gcc) gets the host's, which
are right only for the host's architecture.

``--package`` puts an importable ``uidprobe`` under STAGE: the Python
sources, the engine (cffi writes its C here, CC compiles it against the
target's Python headers) and the runner beside it.  The target then needs
only Python and its ``_cffi_backend`` (``.ci/arch`` runs it under qemu-user).

Also a module (``runpy.run_path``): ``build(cc, output)`` and
``build_package(cc, stage, includes)``.
"""

from __future__ import annotations

import argparse
import ast
import os
import runpy
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
SOURCES = sorted(p for p in CSRC.glob("*.c") if p.name != "faults.c")
FLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror"]


def _compiles(cc: list[str], program: str, *flags: str, link: bool = True) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        Path(src).write_text(program)
        mode = [] if link else ["-c"]
        cmd = [*cc, *flags, *mode, "-Werror=implicit-function-declaration", src, "-o", os.path.join(tmp, "probe")]
        try:
            return subprocess.run(cmd, capture_output=True, check=False).returncode == 0
        except OSError:
            return False


def optional_macros(cc: list[str]) -> list[str]:
    """-DHAVE_X=1 for each optional call this compiler's C library links
    (the same programs src/build_engine.py tries)."""
    # The table alone, read as data: importing the build script needs cffi.
    tree = ast.parse((ROOT / "src" / "build_engine.py").read_text())
    funcs: dict[str, str] = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "OPTIONAL_FUNCS" for t in node.targets)
    )
    head = "#define _GNU_SOURCE 1\n#include <unistd.h>\n#include <sys/types.h>\n"
    return [
        f"-DHAVE_{name.upper()}=1"
        for name, body in funcs.items()
        if _compiles(cc, f"{head}int main(void) {{ {body} }}\n", "-static")
    ]


def host_kernel_headers(work: Path) -> list[str]:
    """The host's Linux uapi headers only (linux/, asm/, asm-generic/), for a
    compiler whose C library does not carry them: Debian's musl-gcc searches
    musl's headers alone (Alpine's linux-headers package plays this part)."""
    multiarch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True, check=False).stdout.strip()
    inc = work / "kernel-include"
    inc.mkdir(exist_ok=True)
    places = (("linux", "/usr/include"), ("asm-generic", "/usr/include"), ("asm", f"/usr/include/{multiarch}"))
    for name, where in places:
        if Path(where, name).is_dir() and not (inc / name).exists():
            (inc / name).symlink_to(Path(where, name))
    return ["-idirafter", str(inc)]


def build(cc: str, output: Path | str) -> Path:
    """Build the runner with ``cc`` (a command line) into ``output``."""
    compiler = shlex.split(cc)
    output = Path(output)
    with tempfile.TemporaryDirectory() as tmp:
        extra: list[str] = []
        if not _compiles(compiler, "#include <linux/capability.h>\nint x;\n", link=False):
            extra = host_kernel_headers(Path(tmp))
        cmd = [*compiler, *FLAGS, "-static", "-I", str(CSRC), *extra, *optional_macros(compiler)]
        subprocess.run([*cmd, "-o", str(output), *map(str, SOURCES)], check=True)
    return output


def build_package(cc: str, stage: Path | str, python_include: list[str]) -> Path:
    """An importable ``uidprobe`` under ``stage`` for ``cc``'s architecture
    (see the module's documentation); the package's directory."""
    compiler = shlex.split(cc)
    package = Path(stage) / "uidprobe"
    if package.exists():
        shutil.rmtree(package)
    shutil.copytree(ROOT / "src" / "uidprobe", package, ignore=shutil.ignore_patterns("*.so", "_runner", "__pycache__"))
    script = runpy.run_path(str(ROOT / "src" / "build_engine.py"), run_name="uidprobe_build")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "_engine.c"
        script["make_builder"](root=str(ROOT)).emit_c_code(str(source))
        engine = [str(CSRC / name) for name in script["ENGINE_SOURCES"]]
        # Not -Werror here: the generated module is cffi's C; the runner
        # build below holds csrc/ to it with this compiler.
        cmd = [*compiler, "-std=gnu11", "-O2", "-shared", "-fPIC", "-I", str(CSRC)]
        cmd += [f"-I{d}" for d in python_include] + optional_macros(compiler)
        subprocess.run([*cmd, "-o", str(package / "_engine.abi3.so"), str(source), *engine], check=True)
    build(cc, package / "_runner")
    return package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--package", action="store_true", help="build the whole package into OUTPUT (a directory)")
    parser.add_argument(
        "-I", dest="include", action="append", default=[], help="where the target's Python.h and pyconfig.h are found"
    )
    parser.add_argument("cc", help="the compiler, e.g. aarch64-linux-gnu-gcc")
    parser.add_argument("output", help="the runner to write (--package: the directory to stage into)")
    args = parser.parse_args()
    if args.package:
        print(build_package(args.cc, args.output, args.include))
    else:
        print(build(args.cc, args.output))


if __name__ == "__main__":
    main()
