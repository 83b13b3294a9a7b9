"""Facts about this process that the tests compare before and after.

Kept free of pytest so that test subprocesses (some under fault injection)
can import it cheaply and without side effects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def identity() -> dict[str, Any]:
    """Everything invariant 1 protects, read from this process."""
    caps = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("Cap", "NoNewPrivs")):
                key, value = line.split(":", 1)
                caps[key] = value.strip()
    return {
        "uids": os.getresuid(),
        "gids": os.getresgid(),
        "groups": sorted(os.getgroups()),
        "caps": caps,
    }


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def children_of_this_process() -> list[tuple[str, str, str]]:
    """(pid, name, state letter) of every process whose parent is this one."""
    me = str(os.getpid())
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name, rest = stat.split("(", 1)[1].rsplit(")", 1)
        fields = rest.split()
        if fields[1] == me:
            found.append((pid, name, fields[0]))
    return found


def zombies_of_this_process() -> list[str]:
    return [pid for pid, _, state in children_of_this_process() if state == "Z"]


def status_caps() -> dict[str, int]:
    """The calling thread's capability sets as the kernel reports them in
    /proc/thread-self/status: {"CapEff": ..., "CapPrm": ..., ...}."""
    with open("/proc/thread-self/status") as f:
        return {k: int(v, 16) for k, _, v in (line.partition(":") for line in f) if k.startswith("Cap")}


def _cap_binding() -> tuple[Any, Any, Any, Any]:
    """ctypes, the C library, a capget/capset header and its data (two halves)."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    return ctypes, libc, Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3: two 32-bit halves


def lower_effective(mask: int) -> None:
    """Take the capabilities in ``mask`` out of the calling thread's
    effective set (they stay permitted), by capset(2) through the C library."""
    ctypes, libc, h, d = _cap_binding()
    if libc.capget(ctypes.byref(h), d) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    d[0].effective &= ~mask & 0xFFFFFFFF
    d[1].effective &= ~mask >> 32 & 0xFFFFFFFF
    if libc.capset(ctypes.byref(h), d) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def capget_sets() -> dict[str, int]:
    """The calling thread's effective, permitted and inheritable sets from
    capget(2), called through the C library's own binding (ctypes): a read
    independent of uidprobe's raw system calls and of /proc."""
    ctypes, libc, h, d = _cap_binding()
    if libc.capget(ctypes.byref(h), d) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    return {
        name: getattr(d[0], field) | getattr(d[1], field) << 32
        for name, field in (("CapEff", "effective"), ("CapPrm", "permitted"), ("CapInh", "inheritable"))
    }


def securebits() -> int:
    """prctl(PR_GET_SECUREBITS), through the C library."""
    import ctypes

    return int(ctypes.CDLL(None).prctl(27, 0, 0, 0, 0))  # PR_GET_SECUREBITS (linux/prctl.h)
