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
import shlex
import subprocess
import sysconfig
import tempfile

from cffi import FFI

OPTIONAL_FUNCS = {
    "getresuid": "uid_t a, b, c; return getresuid(&a, &b, &c);",
    "setresuid": "return setresuid(-1, -1, -1);",
    "getresgid": "gid_t a, b, c; return getresgid(&a, &b, &c);",
    "setresgid": "return setresgid(-1, -1, -1);",
}

CDEF = """
#define UP_OP_SETUID ...
#define UP_OP_SETEUID ...
#define UP_OP_SETREUID ...
#define UP_OP_SETRESUID ...
#define UP_OP_SETGID ...
#define UP_OP_SETEGID ...
#define UP_OP_SETREGID ...
#define UP_OP_SETRESGID ...
#define UP_OP_SETGROUPS ...
#define UP_OP_CAPS_RAISE ...
#define UP_OP_CAPS_CLEAR ...
#define UP_OP_KEEPCAPS ...
#define UP_OP_AMBIENT_CLEAR ...
#define UP_MAX_ARGS ...
#define UP_MAX_GROUPS ...
#define UP_MAX_STEPS ...
#define UP_ID_UNKNOWN ...
#define UP_ANY ...
#define UP_GROUPS_FROM_POOL ...
#define UP_SWITCH_MAX_GROUPS ...
#define UP_READ_CAPS ...
#define UP_SWITCH_OK ...
#define UP_SWITCH_ROLLED_BACK ...
#define UP_SWITCH_STUCK ...
#define UP_SWITCH_BAD_INPUT ...
#define UP_HAVE_GETRESUID ...
#define UP_HAVE_SETRESUID ...
#define UP_HAVE_GETRESGID ...
#define UP_HAVE_SETRESGID ...

struct up_step { int op; int nargs; long long args[...]; };
struct up_record {
    int index; int op; int ret; int err;
    long long uid[3]; long long gid[3];
    long long kuid[3]; long long kgid[3];
    long long fsuid, fsgid;
    int caps_known; unsigned long long cap_eff, cap_prm;
    int ngroups; long long groups[...];
};
struct up_expect {
    long long uid[3]; long long gid[3];
    long long fsuid, fsgid;
    int groups_off; int groups_count;
};
struct up_creds {
    long long uid[3], gid[3];
    long long libc_uid[3], libc_gid[3];
    long long fsuid, fsgid;
    int ngroups; long long groups[...];
    int caps_known;
    unsigned long long cap_eff, cap_prm, cap_inh, cap_amb;
    int keepcaps, securebits;
};
struct up_switch_result {
    int status; int failed_step; int ret, err;
    struct up_creds start; struct up_creds after; struct up_creds now;
};
struct up_outcome {
    int nrecords; int completed; int timed_out;
    int exited; int exit_code; int signaled; int signal;
    int wait_errno; int error; const char *failed_call;
};
int up_run_batch(const struct up_step *steps, const int *counts, int nscenarios,
                 struct up_record *records, struct up_outcome *outcomes,
                 int timeout_ms);
int up_features(void);
int up_read_creds(struct up_creds *c, int flags);
int up_switch(const struct up_step *steps, const struct up_expect *expect, int nsteps,
              const struct up_step *undo, int nundo, const long long *pool, int npool,
              struct up_switch_result *res);
int up_spawn_batch(const char *runner,
                   const struct up_step *steps, const int *counts, int nscenarios,
                   struct up_record *records, struct up_outcome *outcomes,
                   int timeout_ms);
"""


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
) -> FFI:
    """An FFI builder for the engine; ``root`` is the project directory."""
    csrc = os.path.join(root, "csrc")
    builder = FFI()
    builder.cdef(CDEF)
    builder.set_source(
        module_name,
        '#include "engine.h"',
        sources=[os.path.join(csrc, "engine.c"), os.path.join(csrc, "steps.c")],
        include_dirs=[csrc],
        depends=[os.path.join(csrc, "engine.h"), os.path.join(csrc, "rawsys.h")],
        define_macros=detect_macros(hidden),
    )
    return builder


def _hidden_from_env() -> frozenset[str]:
    names = os.environ.get("UIDPROBE_HIDE_FUNCS", "")
    return frozenset(n.strip() for n in names.split(",") if n.strip())


ffibuilder = make_builder(hidden=_hidden_from_env())

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
