"""cffi build script for ``uidprobe._engine`` (out-of-line API mode).

setuptools runs this file (``cffi_modules`` in setup.py) from the project root,
so source paths are relative to it.  The C library's optional calls are
detected the autoconf way, by compiling and linking a tiny program, because a
header declaring ``getresuid`` is not proof that libc provides it.

``UIDPROBE_HIDE_FUNCS=getresuid,setresuid`` pretends those functions are
missing, so that the fallback paths (macOS, older BSDs) are built and tested
on Linux too.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import sysconfig
import tempfile

from cffi import FFI

OPTIONAL_FUNCS = {
    "getresuid": "uid_t a, b, c; return getresuid(&a, &b, &c);",
    "setresuid": "return setresuid(-1, -1, -1);",
    "getresgid": "gid_t a, b, c; return getresgid(&a, &b, &c);",
    "setresgid": "return setresgid(-1, -1, -1);",
}

#: The C files of the engine, relative to csrc/ (the runner adds runner.c).
ENGINE_SOURCES = ("spawn.c", "wire.c", "steps.c")
#: The headers they include: rebuild when one changes, ship them in the sdist.
ENGINE_HEADERS = ("api.h", "engine.h", "rawsys.h")

#: Bind every symbol at load time: a forked probe child must never run the
#: dynamic linker's lazy binding (it takes locks and may allocate).
LINK_ARGS = ["-Wl,-z,now"] if sys.platform.startswith("linux") else []

_DEFINE = re.compile(r"^#define\s+(\w+)\s+.*$", re.MULTILINE)
_GUARD = re.compile(r"^#(?:ifndef|endif|include)\b.*$|^#define\s+\w+_H\s*$", re.MULTILINE)
_NAMED_BOUND = re.compile(r"\[UP_\w+\]")


def cdef_from_header(text: str) -> str:
    """The cffi cdef for csrc/api.h: the header's own declarations, with the
    include guard dropped, each ``#define NAME value`` as ``#define NAME ...``
    (cffi takes the value from the compiler) and array bounds named by a
    macro as ``[...]``."""
    text = _GUARD.sub("", text)
    text = _DEFINE.sub(r"#define \1 ...", text)
    return _NAMED_BOUND.sub("[...]", text)


def _links(body: str) -> bool:
    """True when a program calling ``body`` compiles and links here."""
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    program = f"#define _GNU_SOURCE 1\n#include <unistd.h>\n#include <sys/types.h>\nint main(void) {{ {body} }}\n"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(program)
        try:
            result = subprocess.run(
                [*cc, "-Werror=implicit-function-declaration", src, "-o", os.path.join(tmp, "probe")],
                capture_output=True,
                check=False,
            )
        except OSError:
            return False
        return result.returncode == 0


def detect_macros(hidden: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """``HAVE_<FUNC>`` macros for the optional calls this C library provides."""
    return [
        (f"HAVE_{name.upper()}", "1") for name, body in OPTIONAL_FUNCS.items() if name not in hidden and _links(body)
    ]


def make_builder(
    module_name: str = "uidprobe._engine",
    root: str = ".",
    hidden: frozenset[str] = frozenset(),
    extra_macros: tuple[tuple[str, str], ...] = (),
) -> FFI:
    """An FFI builder for the engine; ``root`` is the project directory.

    ``extra_macros`` are for test builds only (e.g.
    ``UP_FAULT_THREAD_BROADCAST_BUILD``, see csrc/steps.c).
    """
    csrc = os.path.join(root, "csrc")
    with open(os.path.join(csrc, "api.h")) as f:
        cdef = cdef_from_header(f.read())
    builder = FFI()
    builder.cdef(cdef)
    builder.set_source(
        module_name,
        '#include "engine.h"',
        sources=[os.path.join(csrc, name) for name in ENGINE_SOURCES],
        include_dirs=[csrc],
        depends=[os.path.join(csrc, name) for name in ENGINE_HEADERS],
        define_macros=[*detect_macros(hidden), *extra_macros],
        extra_link_args=LINK_ARGS,
    )
    return builder


def hidden_from_env() -> frozenset[str]:
    """The functions ``UIDPROBE_HIDE_FUNCS`` asks the build to treat as missing."""
    names = os.environ.get("UIDPROBE_HIDE_FUNCS", "")
    return frozenset(n.strip() for n in names.split(",") if n.strip())


ffibuilder = make_builder(hidden=hidden_from_env())

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
