"""What this process may do: its privilege and the ids it can switch to.

A probe is only meaningful when the child can really establish the start
state (real U, effective 0, saved 0).  These checks run in the parent, before
any fork, so that "this process could not test" is reported with a reason
that names the cause, and never confused with "the platform is broken".
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from uidprobe.ids import MAX_ID, PREFERRED_IDS, Family, IdSet, validate_ids

T = TypeVar("T")

__all__ = [
    "CAP_SETGID",
    "CAP_SETUID",
    "IdMap",
    "IdsInUse",
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
    return ProcessState(
        euid=euid,
        cap_setuid=bool(caps >> CAP_SETUID & 1) if caps is not None else euid == 0,
        cap_setgid=bool(caps >> CAP_SETGID & 1) if caps is not None else euid == 0,
        caps_known=caps_known,
        uid_map=uid_map,
        gid_map=gid_map,
        setgroups_allowed=setgroups_allowed,
        emulation=_emulation(status),
    )


def _pids(proc: str) -> list[str]:
    try:
        return [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return []


def _held_ids(proc: str, pids: list[str]) -> tuple[set[int], set[int]]:
    """(uids, gids) that one of ``pids`` in ``proc`` holds as its real,
    effective or saved id (a saved id can become effective)."""
    held: tuple[set[int], set[int]] = (set(), set())
    try:
        dirfd = os.open(proc, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return held
    try:
        for pid in pids:
            try:
                fd = os.open(f"{pid}/status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd)
            except OSError:
                continue  # gone since the listing
            try:
                text = os.read(fd, 4096)
            except OSError:
                continue
            finally:
                os.close(fd)
            for ids, label in zip(held, (b"\nUid:", b"\nGid:")):
                at = text.find(label)
                if at >= 0:  # real, effective, saved, filesystem
                    ids.update(int(w) for w in text[at + 5 : text.find(b"\n", at + 5)].split()[:3] if w.isdigit())
    finally:
        os.close(dirfd)
    return held


def _named(family: Family, i: int) -> bool:
    """Does a passwd (uid) or group (gid) entry name ``i``?  Through the C
    library, so every NSS source counts (LDAP, systemd's dynamic users)."""
    import grp
    import pwd

    try:
        (pwd.getpwuid if family is Family.UID else grp.getgrgid)(i)
    except (KeyError, OverflowError):
        return False
    return True


@dataclass(frozen=True)
class IdsInUse:
    """The ids that are somebody's here, read before choosing U, A, B.

    Any process whose real or effective uid is a probe id may signal the
    probe children (kill(2) allows it): stop them or kill them.  So the
    default ids are ones no running process holds (real, effective or saved,
    from /proc/PID/status; never chosen), that are not the kernel's overflow
    ids, and, unless too few are left, that no passwd or group entry names
    (a user who could start a process later).  Not seen from here:
    processes of a parent pid namespace, a thread whose credentials differ
    from its process's, and whoever takes an id after this look; the engine
    catches a child they disturb (``Outcome.disturbed``).
    """

    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    #: does a database entry name this id (tests give a table)
    named: Callable[[Family, int], bool] = _named

    @classmethod
    def read(cls, proc: str = "/proc") -> IdsInUse:
        return cls._of(proc, _pids(proc))

    @classmethod
    def look(cls, then: Callable[[IdsInUse], T], proc: str = "/proc") -> Callable[[], T]:
        """Start reading the ids of the processes running now, and
        ``then(ids)``; call the result for its answer.  The list is taken
        here; the /proc files (and whatever ``then`` looks up), read in a
        thread whose every read releases the GIL, overlap the caller's own
        work (suite.run: a probe batch, whose processes are not in the list).
        """
        pids = _pids(proc)
        box: list[T] = []
        try:
            worker = threading.Thread(target=lambda: box.append(then(cls._of(proc, pids))), daemon=True)
            worker.start()
        except RuntimeError:  # no thread to be had: read them now
            box.append(then(cls._of(proc, pids)))
            return lambda: box[0]

        def result() -> T:
            worker.join()
            return box[0] if box else then(cls._of(proc, pids))  # the thread failed: here, to see why

        return result

    @classmethod
    def _of(cls, proc: str, pids: list[str]) -> IdsInUse:
        uids, gids = _held_ids(proc, pids)
        for ids, name in ((uids, "overflowuid"), (gids, "overflowgid")):
            text = _read(f"/proc/sys/kernel/{name}")
            if text and text.strip().isdigit():
                ids.add(int(text))
        return cls(frozenset(uids), frozenset(gids))

    def held(self, family: Family) -> frozenset[int]:
        return self.uids if family is Family.UID else self.gids


#: The most mapped ids choose_ids examines (each may cost a passwd lookup;
#: three free ones are normally among the first).
SEARCH_LIMIT = 4096


def _candidates(idmap: IdMap | None) -> Iterator[int]:
    """Non-root ids in the order choose_ids tries them: PREFERRED_IDS, then
    every mapped id (every id without a map) from 1 up, range by range."""
    ranges = [(0, MAX_ID + 1)] if idmap is None else [(start, start + count) for start, _, count in idmap.ranges]
    mapped = [i for i in PREFERRED_IDS if any(lo <= i < hi for lo, hi in ranges)]
    yield from mapped
    for lo, hi in ranges:
        yield from (i for i in range(max(lo, 1), min(hi, MAX_ID + 1)) if i not in mapped)


def choose_ids(
    idmap: IdMap | None,
    kind: str,
    requested: tuple[int, int, int] | None = None,
    in_use: IdsInUse | None = None,
) -> IdSet | str:
    """Three switchable ids (U, A, B), or the reason there are none.

    ``requested`` ids are used as given (once validated and, in a user
    namespace, found mapped: others give EINVAL).  Otherwise the first three
    of ``_candidates`` that ``in_use`` (see IdsInUse) finds free: the same
    ids on every run while nobody takes them.  Where fewer than three are
    free, ids that an entry names but no process holds fill in (a small
    user namespace map often covers a login user's ids only).
    """
    if requested is not None:
        validate_ids(requested, kind)
        if idmap is not None:
            unmapped = [i for i in requested if not idmap.contains(i)]
            if unmapped:
                return f"{kind} {unmapped[0]} is not mapped in {idmap.describe()}"
        return IdSet(*requested)
    family = Family(kind)
    held = in_use.held(family) if in_use is not None else frozenset()
    unheld: list[tuple[int, bool]] = []  # (id, named by an entry), in candidate order
    free = examined = 0
    for i in itertools.islice(_candidates(idmap), SEARCH_LIMIT):
        examined += 1
        if i in held:
            continue
        named = in_use is not None and in_use.named(family, i)
        unheld.append((i, named))
        free += not named
        if free == 3:
            return IdSet(*(i for i, named in unheld if not named))
    if len(unheld) >= 3:
        spare = [i for i, named in unheld if named][: 3 - free]  # the first named ones tried
        return IdSet(*(i for i, named in unheld if not named or i in spare))
    where = idmap.describe() if idmap is not None else "this system"
    if examined < 3:
        return f"only {examined} non-root {kind}(s) mapped in {where}; the probes need three to switch between"
    return (
        f"only {len(unheld)} of the {examined} {kind}s tried in {where} are held by no running "
        "process; the probes need three to switch between"
    )
