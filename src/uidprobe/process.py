"""What this process may do: its privilege and the ids it can switch to.

A probe is only meaningful when the child can really establish the start
state (real U, effective 0, saved 0).  These checks run in the parent, before
any fork, so that "this process could not test" is reported with a reason
that names the cause, and never confused with "the platform is broken".
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from uidprobe.ids import DEFAULT_IDS, MAX_ID, Family, IdSet, validate_ids

__all__ = [
    "CAP_SETGID",
    "CAP_SETUID",
    "IdMap",
    "ProcessState",
    "choose_ids",
    "read_state",
]

CAP_SETGID = 6
CAP_SETUID = 7
#: securebits (linux/securebits.h): set*id leaves the capability sets alone.
SECBIT_NO_SETUID_FIXUP = 1 << 2


@dataclass(frozen=True)
class IdMap:
    """One of /proc/self/uid_map or gid_map: (inside, outside, count) ranges."""

    path: str
    ranges: tuple[tuple[int, int, int], ...]

    def contains(self, i: int) -> bool:
        return any(start <= i < start + count for start, _, count in self.ranges)

    def describe(self) -> str:
        body = "; ".join(f"{a} {b} {c}" for a, b, c in self.ranges) or "empty"
        return f"{self.path} ({body})"


@dataclass(frozen=True)
class ProcessState:
    """Privilege-related facts about this process, read without side effects."""

    euid: int
    cap_setuid: bool
    cap_setgid: bool
    caps_known: bool  # False off Linux: privilege is then "euid is 0"
    uid_map: IdMap | None
    gid_map: IdMap | None
    setgroups_allowed: bool
    #: the kernel's overflow uid/gid, read only where a map lacks the default
    #: ids (choose_ids then searches it and must skip them); else empty
    overflow_ids: frozenset[int] = field(default_factory=frozenset)
    #: why the C library's ids cannot be believed (an emulated root), or None
    emulation: str | None = None
    #: prctl(PR_GET_SECUREBITS); None where not read (/proc does not show
    #: them: suite.run asks the engine before it forks)
    securebits: int | None = None

    def cannot_switch(self, family: Family) -> str | None:
        """Why this process cannot establish a probe's start state, or None.

        Every probe starts as root (CAP_SETUID); gid probes need CAP_SETGID too.
        """
        if self.emulation:
            return f"this process cannot test: {self.emulation}"
        if self.securebits is not None and self.securebits & SECBIT_NO_SETUID_FIXUP:
            return (
                "this process cannot test: SECBIT_NO_SETUID_FIXUP is set, so the kernel keeps its capabilities "
                "across set*id calls and what a call allows here is not what it allows root elsewhere "
                "(probe without that securebit)"
            )
        need = [("CAP_SETUID", self.cap_setuid)]
        if Family(family) is not Family.UID:
            need.append(("CAP_SETGID", self.cap_setgid))
        missing = [name for name, have in need if not have]
        if not missing:
            return None
        what = " and ".join(missing)
        if not self.caps_known:
            return f"this process cannot test: it is not root (euid {self.euid}); run it as root"
        if self.euid == 0:
            return (
                f"this process cannot test: it runs as root but without {what} in its effective "
                "capability set (removed by a container runtime or a bounding set?)"
            )
        return f"this process cannot test: it is not root (euid {self.euid}) and lacks {what}; run it as root"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _parse_map(path: str) -> IdMap | None:
    text = _read(path)
    if text is None:
        return None
    ranges = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            ranges.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return IdMap(path, tuple(ranges))


def _status_fields(status: str | None) -> dict[str, list[str]]:
    """``/proc/self/status`` as {name: the words after it}, read once."""
    fields: dict[str, list[str]] = {}
    for line in (status or "").splitlines():
        name, sep, rest = line.partition(":")
        if sep:
            fields[name] = rest.split()
    return fields


def _effective_caps(status: dict[str, list[str]]) -> int | None:
    field = status.get("CapEff")
    return int(field[0], 16) if field else None


def _emulation(status: dict[str, list[str]]) -> str | None:
    """Where the C library's ids differ from the kernel's (``/proc``: the
    kernel's own account), an LD_PRELOAD emulation such as fakeroot answers
    the calls; nothing measured through it describes this machine."""
    for what, libc in (("uid", os.getresuid()), ("gid", os.getresgid())):
        kernel = status.get(what.capitalize())
        if not kernel or len(kernel) < 3:
            continue
        for label, a, b in zip(("real", "effective", "saved"), libc, kernel):
            if str(a) != b:
                from uidprobe.engine import emulation_reason  # only on this rare path

                return emulation_reason(f"{label} {what}", a, b)
    return None


def _overflow_ids() -> frozenset[int]:
    ids = set()
    for path in ("/proc/sys/kernel/overflowuid", "/proc/sys/kernel/overflowgid"):
        text = _read(path)
        if text and text.strip().isdigit():
            ids.add(int(text))
    return frozenset(ids)


#: A user namespace's maps and setgroups answer, once both maps are written
#: (then none of the three can change), keyed by the namespace's identity.
_NAMESPACE_FACTS: dict[tuple[str, int, int], tuple[IdMap | None, IdMap | None, bool]] = {}


def _namespace_facts(proc: str) -> tuple[IdMap | None, IdMap | None, bool]:
    """(uid_map, gid_map, setgroups allowed) of ``proc``'s user namespace."""
    try:
        ns = os.stat(f"{proc}/ns/user")
        key: tuple[str, int, int] | None = (proc, ns.st_dev, ns.st_ino)
    except OSError:
        key = None
    known = _NAMESPACE_FACTS.get(key) if key is not None else None
    if known is not None:
        return known
    setgroups_text = _read(f"{proc}/setgroups")
    facts = (
        _parse_map(f"{proc}/uid_map"),
        _parse_map(f"{proc}/gid_map"),
        setgroups_text is None or setgroups_text.strip() != "deny",
    )
    if key is not None and facts[0] is not None and facts[0].ranges and facts[1] is not None and facts[1].ranges:
        _NAMESPACE_FACTS[key] = facts  # written maps are final, and setgroups with them
    return facts


def _own_status() -> str | None:
    """The calling thread's /proc status: credentials are per thread, and
    /proc/self/status describes the main thread only (a thread switched by
    ``Switcher(scope="thread")`` would be judged by root's capabilities, and
    its ids taken for an emulation's)."""
    return _read("/proc/thread-self/status") or _read("/proc/self/status")


def read_state(proc: str = "/proc/self") -> ProcessState:
    """The calling thread's privilege facts (Linux: from /proc)."""
    euid = os.geteuid()
    linux = sys.platform.startswith("linux")
    status = _status_fields(_own_status() if linux else None)
    caps = _effective_caps(status)
    caps_known = caps is not None
    uid_map, gid_map, setgroups_allowed = _namespace_facts(proc)
    # Overflow ids matter only where choose_ids must search a map that lacks
    # the default ids (a user namespace): read the sysctls only then.
    searched = any(m is not None and not all(m.contains(i) for i in DEFAULT_IDS) for m in (uid_map, gid_map))
    return ProcessState(
        euid=euid,
        cap_setuid=bool(caps >> CAP_SETUID & 1) if caps is not None else euid == 0,
        cap_setgid=bool(caps >> CAP_SETGID & 1) if caps is not None else euid == 0,
        caps_known=caps_known,
        uid_map=uid_map,
        gid_map=gid_map,
        setgroups_allowed=setgroups_allowed,
        overflow_ids=_overflow_ids() if searched else frozenset(),
        emulation=_emulation(status),
    )


def choose_ids(
    idmap: IdMap | None,
    kind: str,
    requested: tuple[int, int, int] | None = None,
    overflow: frozenset[int] = frozenset(),
) -> IdSet | str:
    """Three switchable ids (U, A, B), or the reason there are none.

    Without a map (not Linux) every id is assumed switchable.  In a user
    namespace only mapped ids can be switched to (others give EINVAL), so
    those are chosen, preferring DEFAULT_IDS.
    """
    if requested is not None:
        validate_ids(requested, kind)
        if idmap is not None:
            unmapped = [i for i in requested if not idmap.contains(i)]
            if unmapped:
                return f"{kind} {unmapped[0]} is not mapped in {idmap.describe()}"
        return IdSet(*requested)
    if idmap is None or all(idmap.contains(i) for i in DEFAULT_IDS):
        return IdSet(*DEFAULT_IDS)
    found: list[int] = []
    for start, _, count in idmap.ranges:
        for i in range(max(start, 1), min(start + count, MAX_ID + 1)):
            if i not in overflow and i not in found:
                found.append(i)
            if len(found) == 3:
                return IdSet(*found)
    return f"only {len(found)} non-root {kind}(s) mapped in {idmap.describe()}; the probes need three to switch between"
