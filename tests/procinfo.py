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
