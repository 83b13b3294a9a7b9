#!/usr/bin/env python3
"""Build uidprobe's runner program with another compiler: another C library
(``musl-gcc``) or another architecture (``aarch64-linux-gnu-gcc``,
``i686-linux-gnu-gcc``, ``s390x-linux-gnu-gcc``).

    scripts/build_runner.py CC OUTPUT

The runner is every ``csrc/*.c`` but the test-only ``faults.c``, linked
statically (so qemu-user runs it without a foreign root), with the
``HAVE_*`` macros that ``src/build_engine.py``'s feature check finds with
*this* compiler, and -Wall -Wextra -Werror.  A compiler whose C library
carries no Linux uapi headers (Debian's musl-gcc) gets the host's, which
are right only for the host's architecture.

Also a module (``runpy.run_path``): ``build(cc, output)`` is what the tests
and ``.ci/arch`` call.
"""

from __future__ import annotations

import ast
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
SOURCES = sorted(p for p in CSRC.glob("*.c") if p.name != "faults.c")
FLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-static"]


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
        cmd = [*compiler, *FLAGS, "-I", str(CSRC), *extra, *optional_macros(compiler)]
        subprocess.run([*cmd, "-o", str(output), *map(str, SOURCES)], check=True)
    return output


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1].strip() if __doc__ else "usage: build_runner.py CC OUTPUT")
    print(build(sys.argv[1], sys.argv[2]))
