"""The probes, as data.

Each probe starts from a named start state, then lists calls with what the
ids must read back as afterwards.  Ids are symbolic: ``U`` is the invoking
ordinary user, ``A`` and ``B`` two other users, ``0`` root and ``-1`` "leave
unchanged".  They become numbers only when a probe runs (``plan``), because
which ids a process can switch to depends on where it runs (user namespaces).

Adding a probe is adding an entry to ``PROBES`` (and its name to
``names.OBSERVED``, which the import-time path reads without this module).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Union

from uidprobe.engine import Op
from uidprobe.ids import Family

__all__ = [
    "PROBES",
    "A",
    "B",
    "Call",
    "Family",
    "Probe",
    "Pseudo",
    "Role",
    "Sym",
    "SymPattern",
    "U",
    "Who",
    "by_name",
    "call",
]


class Who(enum.Enum):
    """A symbolic id, resolved against an ``ids.IdSet`` when the probe runs."""

    U = "U"  # the invoking ordinary user
    A = "A"
    B = "B"


U, A, B = Who.U, Who.A, Who.B

#: An id in a probe: a number (0 root, -1 unchanged) or a symbol.
Sym = Union[int, Who]
#: What a triple must read back as; None in a position: not checked.
SymPattern = tuple[Optional[Sym], Optional[Sym], Optional[Sym]]


class Role(enum.Enum):
    """What a failed expectation means for the verdict."""

    #: establishes the start state: failure means "could not test" (None)
    SETUP = "setup"
    #: drops or regains uid privilege around gid checks: failure is "could not test"
    AUX = "aux"
    #: the behaviour under test: failure means the platform fails the probe (False)
    CHECK = "check"


class Pseudo(enum.Enum):
    """Calls that ``plan`` expands into what the C library offers."""

    SETUID_ROOT = "setuid-root"  # uids (U, 0, 0): a set-user-ID-root program run by U
    SETID_ROOT = "setid-root"  # also gids (U, 0, 0): set-user-ID and set-group-ID root
    DROP = "drop-euid"  # euid U, saved uid stays 0: gid calls now run without privilege
    REGAIN = "regain-euid"  # euid back to 0


@dataclass(frozen=True)
class Call:
    """A call in a probe and what must hold after it.

    ``ok`` is whether the call must succeed (True) or fail (False).  ``uids``,
    ``gids`` are the (real, effective, saved) patterns that must be read back;
    ``groups`` the supplementary group list.  ``sibling_uids``,
    ``sibling_gids`` and ``sibling_groups`` are what a second thread of the
    child (``Op.THREAD_START``) must read back in that thread.  ``None``
    means "not checked".
    """

    op: Op
    args: tuple[Sym, ...]
    ok: bool = True
    uids: SymPattern | None = None
    gids: SymPattern | None = None
    groups: tuple[Sym, ...] | None = None
    role: Role = Role.CHECK
    sibling_uids: SymPattern | None = None
    sibling_gids: SymPattern | None = None
    sibling_groups: tuple[Sym, ...] | None = None


def call(
    op: Op,
    *args: Sym,
    ok: bool = True,
    uids: SymPattern | None = None,
    gids: SymPattern | None = None,
    groups: tuple[Sym, ...] | None = None,
    role: Role = Role.CHECK,
    sibling: tuple[SymPattern, SymPattern, tuple[Sym, ...]] | None = None,
) -> Call:
    """``call(Op.SETEUID, A, uids=(U, A, 0))``: the table's shorthand.

    ``sibling`` is (uids, gids, groups) the second thread must read back."""
    su, sg, sgr = sibling if sibling is not None else (None, None, None)
    return Call(
        op=op,
        args=args,
        ok=ok,
        uids=uids,
        gids=gids,
        groups=groups,
        role=role,
        sibling_uids=su,
        sibling_gids=sg,
        sibling_groups=sgr,
    )


@dataclass(frozen=True)
class Probe:
    """A probe: its config name, what True means, and its calls."""

    name: str
    meaning: str
    start: Pseudo
    calls: tuple[Call | Pseudo, ...]
    needs: tuple[Op, ...] = ()  # optional C library calls it cannot do without
    needs_groups: bool = False  # uses setgroups (refused where /proc/self/setgroups says deny)

    @property
    def family(self) -> Family:
        return Family.UID if self.start is Pseudo.SETUID_ROOT else Family.GID


def _t_seteuid() -> Probe:
    # sendmail's t_seteuid: the effective uid goes away and comes back, twice.
    return Probe(
        name="USESETEUID",
        meaning="seteuid() keeps the saved set-user-ID, so seteuid(0) brings root back",
        start=Pseudo.SETUID_ROOT,
        calls=(
            call(Op.SETEUID, A, uids=(U, A, 0)),
            call(Op.SETEUID, 0, uids=(U, 0, 0)),
            call(Op.SETEUID, B, uids=(U, B, 0)),
            call(Op.SETEUID, 0, uids=(U, 0, 0)),
        ),
    )


def _t_setreuid() -> Probe:
    # sendmail's t_setreuid: give away real and effective root, get both back.
    rounds: list[Call | Pseudo] = []
    for x in (A, B):
        rounds += [
            call(Op.SETREUID, 0, x, uids=(0, x, None)),
            call(Op.SETREUID, -1, 0, uids=(0, 0, None)),
            call(Op.SETREUID, U, 0, uids=(U, 0, None)),
        ]
    return Probe(
        name="HASSETREUID",
        meaning="setreuid() swaps real and effective uids and swaps them back",
        start=Pseudo.SETUID_ROOT,
        calls=tuple(rounds),
    )


def _t_setuid() -> Probe:
    # sendmail's t_setuid plus OpenSSH's check that root cannot be regained.
    return Probe(
        name="SETUID_PERMANENT",
        meaning="setuid() from root sets real, effective and saved uid, and nothing gets root back",
        start=Pseudo.SETUID_ROOT,
        calls=(
            call(Op.SETUID, A, uids=(A, A, A)),
            call(Op.SETUID, 0, ok=False, uids=(A, A, A)),
            call(Op.SETEUID, 0, ok=False, uids=(A, A, A)),
            call(Op.SETREUID, -1, 0, ok=False, uids=(A, A, A)),
        ),
    )


def _t_setresuid() -> Probe:
    return Probe(
        name="HASSETRESUID",
        meaning="setresuid() exists; a temporary drop keeping saved 0 comes back, a full drop cannot",
        start=Pseudo.SETUID_ROOT,
        calls=(
            call(Op.SETRESUID, -1, A, -1, uids=(U, A, 0)),
            call(Op.SETRESUID, -1, 0, -1, uids=(U, 0, 0)),
            call(Op.SETRESUID, A, A, A, uids=(A, A, A)),
            call(Op.SETRESUID, -1, 0, -1, ok=False, uids=(A, A, A)),
            call(Op.SETRESUID, 0, 0, 0, ok=False, uids=(A, A, A)),
        ),
        needs=(Op.SETRESUID,),
    )


# The gid twins.  With euid 0 every gid call succeeds (CAP_SETGID), which
# proves nothing about saved gids; so each "come back" call runs with the
# effective uid dropped (DROP) and privilege is regained only afterwards.


def _t_setegid() -> Probe:
    body: list[Call | Pseudo] = []
    for x in (A, B):
        body += [
            call(Op.SETEGID, x, gids=(U, x, 0)),
            Pseudo.DROP,
            call(Op.SETEGID, 0, gids=(U, 0, 0)),
            Pseudo.REGAIN,
        ]
    return Probe(
        name="USESETEGID",
        meaning="setegid() keeps the saved set-group-ID, so setegid(0) brings gid 0 back without privilege",
        start=Pseudo.SETID_ROOT,
        calls=tuple(body),
    )


def _t_setregid() -> Probe:
    body: list[Call | Pseudo] = []
    for x in (A, B):
        body += [
            call(Op.SETREGID, 0, x, gids=(0, x, None)),
            Pseudo.DROP,
            call(Op.SETREGID, -1, 0, gids=(0, 0, None)),
            Pseudo.REGAIN,
            call(Op.SETREGID, U, 0, gids=(U, 0, None)),
        ]
    return Probe(
        name="HASSETREGID",
        meaning="setregid() swaps real and effective gids and swaps them back",
        start=Pseudo.SETID_ROOT,
        calls=tuple(body),
    )


def _t_setgid() -> Probe:
    return Probe(
        name="SETGID_PERMANENT",
        meaning="setgid() from root sets real, effective and saved gid, and nothing gets gid 0 back",
        start=Pseudo.SETID_ROOT,
        calls=(
            call(Op.SETGID, A, gids=(A, A, A)),
            Pseudo.DROP,
            call(Op.SETGID, 0, ok=False, gids=(A, A, A)),
            call(Op.SETEGID, 0, ok=False, gids=(A, A, A)),
            call(Op.SETREGID, -1, 0, ok=False, gids=(A, A, A)),
        ),
    )


def _t_setresgid() -> Probe:
    return Probe(
        name="HASSETRESGID",
        meaning="setresgid() exists; a temporary drop keeping saved 0 comes back, a full drop cannot",
        start=Pseudo.SETID_ROOT,
        calls=(
            call(Op.SETRESGID, -1, A, -1, gids=(U, A, 0)),
            Pseudo.DROP,
            call(Op.SETRESGID, -1, 0, -1, gids=(U, 0, 0)),
            Pseudo.REGAIN,
            call(Op.SETRESGID, A, A, A, gids=(A, A, A)),
            Pseudo.DROP,
            call(Op.SETRESGID, -1, 0, -1, ok=False, gids=(A, A, A)),
            call(Op.SETRESGID, 0, 0, 0, ok=False, gids=(A, A, A)),
        ),
        needs=(Op.SETRESGID,),
    )


def _t_setgroups() -> Probe:
    return Probe(
        name="SETGROUPS_CAN_CLEAR",
        meaning="setgroups() sets the supplementary groups and can empty them",
        start=Pseudo.SETID_ROOT,
        calls=(
            call(Op.SETGROUPS, A, B, groups=(A, B)),
            call(Op.SETGROUPS, groups=()),
        ),
        needs_groups=True,
    )


def _t_thread_credentials() -> Probe:
    # Samba's HAVE_LINUX_THREAD_CREDENTIALS test, read back in both threads:
    # one thread switches groups, gid and uid with the raw system calls and
    # back; after every call the other thread must still hold the start.
    root_u, root_g, start_groups = (U, 0, 0), (U, 0, 0), (U,)
    sibling = (root_u, root_g, start_groups)

    def step(op: Op, *args: Sym, uids: SymPattern, gids: SymPattern, groups: tuple[Sym, ...]) -> Call:
        return call(op, *args, uids=uids, gids=gids, groups=groups, sibling=sibling)

    return Probe(
        name="THREAD_CREDENTIALS",
        meaning=(
            "the raw setresuid/setresgid/setgroups system calls change the calling thread only, "
            "and switch back (per-thread identity)"
        ),
        start=Pseudo.SETID_ROOT,
        calls=(
            # Raw, so that only the calls under test decide (one thread yet: the process's groups).
            call(Op.THREAD_SETGROUPS, U, groups=start_groups, role=Role.SETUP),
            call(Op.THREAD_START, uids=root_u, gids=root_g, groups=start_groups, sibling=sibling, role=Role.SETUP),
            step(Op.THREAD_SETGROUPS, A, uids=root_u, gids=root_g, groups=(A,)),
            step(Op.THREAD_SETRESGID, -1, A, -1, uids=root_u, gids=(U, A, 0), groups=(A,)),
            step(Op.THREAD_SETRESUID, -1, A, -1, uids=(U, A, 0), gids=(U, A, 0), groups=(A,)),
            step(Op.THREAD_SETRESUID, -1, 0, -1, uids=root_u, gids=(U, A, 0), groups=(A,)),
            step(Op.THREAD_SETRESGID, -1, 0, -1, uids=root_u, gids=root_g, groups=(A,)),
            step(Op.THREAD_SETGROUPS, U, uids=root_u, gids=root_g, groups=start_groups),
        ),
        needs_groups=True,
    )


PROBES: tuple[Probe, ...] = (
    _t_seteuid(),
    _t_setreuid(),
    _t_setuid(),
    _t_setresuid(),
    _t_setegid(),
    _t_setregid(),
    _t_setgid(),
    _t_setresgid(),
    _t_setgroups(),
    _t_thread_credentials(),
)

_BY_NAME = {p.name: p for p in PROBES}


def by_name(name: str) -> Probe:
    """The probe called ``name``; ValueError naming the known ones if none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown probe {name!r}; known: {', '.join(_BY_NAME)}") from None
