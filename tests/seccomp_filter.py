"""A seccomp filter for tests: every call that sets ids or groups fails with EPERM
(setfsuid and setfsgid, which also read, are left alone).

What a sandbox does to a root process (Docker's default profile plus
systemd's ``SystemCallFilter=``, stacked): the calls are refused, nothing
else changes.  Installed by ``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)``
through ctypes, which needs CAP_SYS_ADMIN or no_new_privs (root has the
first).  The system call numbers come from this machine's C headers, read
through the C compiler's preprocessor, not from a table here.

Kept free of pytest: test subprocesses import it by path.
"""

from __future__ import annotations

import ctypes
import errno
import shutil
import subprocess

#: The calls refused (their 32-bit-id twins too, where the ABI has them).
CALLS = ("setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups")

# <linux/prctl.h>, <linux/seccomp.h>, <linux/filter.h>: ABI constants
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_RET_K = 0x06  # BPF_RET | BPF_K


def syscall_numbers(names: tuple[str, ...] = CALLS) -> list[int]:
    """This machine's numbers for ``names`` (and ``name32``), from <sys/syscall.h>."""
    cc = shutil.which("cc")
    if cc is None:
        raise RuntimeError("needs a C compiler to read <sys/syscall.h>")
    wanted = [f"SYS_{n}{suffix}" for n in names for suffix in ("", "32")]
    text = "#include <sys/syscall.h>\n" + "\n".join(wanted) + "\n"
    out = subprocess.run([cc, "-E", "-P", "-"], input=text, capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()[-len(wanted) :]
    return sorted({int(v) for v in lines if v.strip().isdigit()})


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Insn))]


def deny_setid_calls(numbers: list[int] | None = None) -> None:
    """Install the filter on the calling thread (and what it starts)."""
    nums = syscall_numbers() if numbers is None else numbers
    prog = [_Insn(BPF_LD_W_ABS, 0, 0, 0)]  # seccomp_data.nr
    for i, n in enumerate(nums):
        # equal: jump to the EPERM return after the remaining tests and ALLOW
        prog.append(_Insn(BPF_JEQ_K, len(nums) - i, 0, n))
    prog.append(_Insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    prog.append(_Insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM))
    array = (_Insn * len(prog))(*prog)
    fprog = _Prog(len(prog), array)
    libc = ctypes.CDLL(None, use_errno=True)
    arg = ctypes.c_ulong
    if libc.prctl(PR_SET_SECCOMP, arg(SECCOMP_MODE_FILTER), ctypes.byref(fprog), arg(0), arg(0)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
