"""The other threads of this process, as the kernel accounts for them in /proc.

Credentials are per thread in the Linux kernel.  The C library's set*id
wrappers (glibc's and musl's) make the same call in every thread, but
uidprobe can read back, and move the capability sets of, only the calling
thread.  So a process-scope switch is sound only if every other thread
follows it the way the kernel's setuid fixup moves the calling thread's
sets: this module says, from each thread's /proc status, which would not.

What each other thread must hold, and what goes wrong otherwise:

* the calling thread's uids, gids (real, effective, saved, filesystem) and
  groups: a thread switched on its own (``Switcher(scope="thread")``,
  a per-thread setfsuid) would be overwritten, and put back as root;
* CAP_SETUID and CAP_SETGID in effect: glibc aborts the whole process when
  one thread's call fails where the others' succeeded;
* for a switch to a user other than root, the effective set equal to the
  permitted set and no ambient set: the kernel empties the effective set
  when the effective uid leaves 0 and makes it the permitted set on the way
  back (a set lowered on purpose would come back raised), and it leaves the
  ambient set alone (a program that thread runs as the user would get it).

Securebits are per thread too and /proc does not show them: a thread that
set SECBIT_NO_SETUID_FIXUP for itself keeps its effective set, which only
the switch's outcome can show (``holding_after``).
"""

from __future__ import annotations

import os
import sys
import threading

from uidprobe.trust import cap_names

__all__ = ["alone", "holding_after", "others", "problem_before", "status"]

_LINUX = sys.platform.startswith("linux")
#: CAP_SETGID and CAP_SETUID (linux/capability.h).
_CAP_SETID = 1 << 6 | 1 << 7
_FIELDS = (b"Name", b"Uid", b"Gid", b"Groups", b"CapEff", b"CapPrm", b"CapAmb")
#: How many threads a refusal names.
_NAMED = 3


def alone() -> bool:
    """Does the calling thread have nothing to check: it is the process's
    only thread (the kernel's link count of /proc/self/task is two plus one
    per thread, C threads included), or credentials are not per thread here
    (not Linux)?  One ``stat``: this is on every switch's path."""
    if not _LINUX:
        return True
    try:
        return os.stat("/proc/self/task").st_nlink == 3
    except OSError:
        return False


def status(tid: int | str) -> dict[str, str] | None:
    """The credential lines of a thread's /proc status; None if it is gone.
    Read as bytes: the text layer would cost as much again as the kernel."""
    try:
        fd = os.open(f"/proc/self/task/{tid}/status", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    chunks = []
    try:
        while True:  # to the end: a long Groups line comes before the capability sets
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    found = {}
    for line in data.split(b"\n"):
        name, _, value = line.partition(b":")
        if name in _FIELDS:
            found[name.decode()] = " ".join(value.decode().split())
    return found


def others() -> list[tuple[str, dict[str, str]]] | None:
    """Every other thread's status (None: /proc cannot be read)."""
    me = str(threading.get_native_id())
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    found = []
    for tid in tids:
        if tid != me:
            st = status(tid)
            if st is not None:  # None: it exited meanwhile
                found.append((tid, st))
    return found


def _unreadable() -> str | None:
    """Without /proc only a process Python knows to have one thread passes."""
    if threading.active_count() > 1:
        return "the other threads cannot be checked (/proc/self/task is not readable)"
    return None


def _named(problems: list[str]) -> str | None:
    if not problems:
        return None
    more = f"; and {len(problems) - _NAMED} more" if len(problems) > _NAMED else ""
    return "; ".join(problems[:_NAMED]) + more


def problem_before(uid: int, *, permanent: bool = False) -> str | None:
    """Why some other thread would not follow a process-scope switch to
    effective uid ``uid`` (see the module's documentation), or None.  Only
    where not ``alone()``.  A ``permanent`` drop needs only the ids and the
    calls: the kernel then empties every thread's sets itself."""
    found = others()
    me = status(threading.get_native_id())
    if found is None or me is None:
        return _unreadable()
    problems = []
    for tid, st in found:
        why = _why_not(st, me, uid, permanent)
        if why:
            problems.append(f"thread {label(tid, st)} {why}")
    return _named(problems)


def _why_not(st: dict[str, str], me: dict[str, str], uid: int, permanent: bool) -> str | None:
    if (st.get("Uid"), st.get("Gid")) != (me.get("Uid"), me.get("Gid")):
        return (
            f"holds uids {st.get('Uid')} and gids {st.get('Gid')} (real, effective, saved, filesystem; "
            f"this thread: {me.get('Uid')} and {me.get('Gid')})"
        )
    if set(st.get("Groups", "").split()) != set(me.get("Groups", "").split()):
        return f"holds groups [{st.get('Groups', '')}] (this thread: [{me.get('Groups', '')}])"
    eff, prm, amb = (int(st.get(k, "0"), 16) for k in ("CapEff", "CapPrm", "CapAmb"))
    if _CAP_SETID & ~eff:
        return (
            f"lacks {cap_names(_CAP_SETID & ~eff)} in its effective set (the C library makes the call in every "
            "thread, and aborts the process when it fails in one)"
        )
    if uid == 0 or permanent:
        return None  # the effective uid stays 0, or every set is emptied: nothing of the thread's own to lose
    if eff != prm:
        return (
            f"has its effective set below its permitted set (CapEff={eff:#x}, CapPrm={prm:#x}): the kernel "
            "would raise it to the permitted set on the way back"
        )
    if amb:
        return f"holds ambient {cap_names(amb)}, which it would keep as uid {uid} (a program it runs gets them)"
    return None


def label(tid: str, st: dict[str, str]) -> str:
    """``25781 ('qemu-s390x-stat')``: a thread as a refusal names it."""
    return f"{tid} ({st.get('Name', '')!r})"


def holding_after(uid: int) -> str | None:
    """After a process-scope switch to effective uid ``uid`` (not root):
    which other threads still hold an effective or ambient capability, and
    why, or None.  Only where not ``alone()`` before the switch."""
    found = others()
    if found is None:
        return _unreadable()
    problems = []
    for tid, st in found:
        eff, amb = int(st.get("CapEff", "0"), 16), int(st.get("CapAmb", "0"), 16)
        if eff or amb:
            held = f"thread {label(tid, st)} still held CapEff={eff:#x}" + (f", CapAmb={amb:#x}" if amb else "")
            if str(uid) not in st.get("Uid", "").split()[1:2]:
                held += (
                    f" and uids {st.get('Uid')}: the C library never changed its ids (a thread it does not know: "
                    "an emulator's own, as under qemu-user, or one started by a raw clone)"
                )
            else:
                held += ": the kernel kept its effective set (SECBIT_NO_SETUID_FIXUP set in that thread)"
            problems.append(held)
    return _named(problems)
