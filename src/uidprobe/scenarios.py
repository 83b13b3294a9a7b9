"""The probes, as data.

Each scenario starts from a named start state, then lists calls with what the
ids must read back as afterwards.  Ids are symbolic: ``U`` is the invoking
ordinary user, ``A`` and ``B`` two other users, ``0`` root and ``-1`` "leave
unchanged".  They become numbers only when a probe runs (``plan``), because
which ids a process can switch to depends on where it runs (user namespaces).

Adding a probe is adding an entry to ``SCENARIOS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from uidprobe.engine import Features, Op, Step

__all__ = [
    "SCENARIOS",
    "A",
    "B",
    "Call",
    "IdSet",
    "Plan",
    "PlannedStep",
    "Role",
    "Scenario",
    "U",
    "by_name",
    "plan",
]

#: Symbolic ids, resolved against an IdSet when the probe runs.
U = "U"
A = "A"
B = "B"
Sym = Union[int, str]
Triple = tuple[Optional[Sym], Optional[Sym], Optional[Sym]]  # None: not checked


class Role:
    """What a failed expectation means for the verdict."""

    #: establishes the start state: failure means "could not test" (None)
    SETUP = "setup"
    #: drops or regains uid privilege around gid checks: failure is "could not test"
    AUX = "aux"
    #: the behaviour under test: failure means the platform fails the probe (False)
    CHECK = "check"


@dataclass(frozen=True)
class Call:
    """A call in a scenario and what must hold after it.

    ``ok`` is whether the call must succeed (True) or fail (False).  ``uids``,
    ``gids`` are the (real, effective, saved) triples that must be read back;
    ``groups`` the supplementary group list.  ``None`` means "not checked".
    """

    op: Op
    args: tuple[Sym, ...]
    ok: bool = True
    uids: Triple | None = None
    gids: Triple | None = None
    groups: tuple[Sym, ...] | None = None
    role: str = Role.CHECK


def call(op: Op, *args: Sym, **expect: object) -> Call:
    return Call(op, tuple(args), **expect)  # type: ignore[arg-type]


# Pseudo-calls, expanded by ``plan`` into what the C library offers.
START_SETUID_ROOT = "setuid-root"  # uids (U, 0, 0): a set-user-ID-root program run by U
START_SETID_ROOT = "setid-root"  # also gids (U, 0, 0): set-user-ID and set-group-ID root
DROP = "drop-euid"  # euid U, saved uid stays 0: gid calls now run without privilege
REGAIN = "regain-euid"  # euid back to 0


@dataclass(frozen=True)
class Scenario:
    """A probe: its config name, what True means, and its calls."""

    name: str
    meaning: str
    start: str
    calls: tuple[Call | str, ...]
    needs: tuple[str, ...] = ()  # optional C library calls it cannot do without
    needs_groups: bool = False  # uses setgroups (refused where /proc/self/setgroups says deny)

    @property
    def family(self) -> str:
        return "uid" if self.start == START_SETUID_ROOT else "gid"


def _t_seteuid() -> Scenario:
    # sendmail's t_seteuid: the effective uid goes away and comes back, twice.
    return Scenario(
        "USESETEUID",
        "seteuid() keeps the saved set-user-ID, so seteuid(0) brings root back",
        START_SETUID_ROOT,
        (
            call(Op.SETEUID, A, uids=(U, A, 0)),
            call(Op.SETEUID, 0, uids=(U, 0, 0)),
            call(Op.SETEUID, B, uids=(U, B, 0)),
            call(Op.SETEUID, 0, uids=(U, 0, 0)),
        ),
    )


def _t_setreuid() -> Scenario:
    # sendmail's t_setreuid: give away real and effective root, get both back.
    rounds: list[Call | str] = []
    for x in (A, B):
        rounds += [
            call(Op.SETREUID, 0, x, uids=(0, x, None)),
            call(Op.SETREUID, -1, 0, uids=(0, 0, None)),
            call(Op.SETREUID, U, 0, uids=(U, 0, None)),
        ]
    return Scenario(
        "HASSETREUID",
        "setreuid() swaps real and effective uids and swaps them back",
        START_SETUID_ROOT,
        tuple(rounds),
    )


def _t_setuid() -> Scenario:
    # sendmail's t_setuid plus OpenSSH's check that root cannot be regained.
    return Scenario(
        "SETUID_PERMANENT",
        "setuid() from root sets real, effective and saved uid, and nothing gets root back",
        START_SETUID_ROOT,
        (
            call(Op.SETUID, A, uids=(A, A, A)),
            call(Op.SETUID, 0, ok=False, uids=(A, A, A)),
            call(Op.SETEUID, 0, ok=False, uids=(A, A, A)),
            call(Op.SETREUID, -1, 0, ok=False, uids=(A, A, A)),
        ),
    )


def _t_setresuid() -> Scenario:
    return Scenario(
        "HASSETRESUID",
        "setresuid() exists; a temporary drop keeping saved 0 comes back, a full drop cannot",
        START_SETUID_ROOT,
        (
            call(Op.SETRESUID, -1, A, -1, uids=(U, A, 0)),
            call(Op.SETRESUID, -1, 0, -1, uids=(U, 0, 0)),
            call(Op.SETRESUID, A, A, A, uids=(A, A, A)),
            call(Op.SETRESUID, -1, 0, -1, ok=False, uids=(A, A, A)),
            call(Op.SETRESUID, 0, 0, 0, ok=False, uids=(A, A, A)),
        ),
        needs=("setresuid",),
    )


# The gid twins.  With euid 0 every gid call succeeds (CAP_SETGID), which
# proves nothing about saved gids; so each "come back" call runs with the
# effective uid dropped (DROP) and privilege is regained only afterwards.


def _t_setegid() -> Scenario:
    body: list[Call | str] = []
    for x in (A, B):
        body += [
            call(Op.SETEGID, x, gids=(U, x, 0)),
            DROP,
            call(Op.SETEGID, 0, gids=(U, 0, 0)),
            REGAIN,
        ]
    return Scenario(
        "USESETEGID",
        "setegid() keeps the saved set-group-ID, so setegid(0) brings gid 0 back without privilege",
        START_SETID_ROOT,
        tuple(body),
    )


def _t_setregid() -> Scenario:
    body: list[Call | str] = []
    for x in (A, B):
        body += [
            call(Op.SETREGID, 0, x, gids=(0, x, None)),
            DROP,
            call(Op.SETREGID, -1, 0, gids=(0, 0, None)),
            REGAIN,
            call(Op.SETREGID, U, 0, gids=(U, 0, None)),
        ]
    return Scenario(
        "HASSETREGID",
        "setregid() swaps real and effective gids and swaps them back",
        START_SETID_ROOT,
        tuple(body),
    )


def _t_setgid() -> Scenario:
    return Scenario(
        "SETGID_PERMANENT",
        "setgid() from root sets real, effective and saved gid, and nothing gets gid 0 back",
        START_SETID_ROOT,
        (
            call(Op.SETGID, A, gids=(A, A, A)),
            DROP,
            call(Op.SETGID, 0, ok=False, gids=(A, A, A)),
            call(Op.SETEGID, 0, ok=False, gids=(A, A, A)),
            call(Op.SETREGID, -1, 0, ok=False, gids=(A, A, A)),
        ),
    )


def _t_setresgid() -> Scenario:
    return Scenario(
        "HASSETRESGID",
        "setresgid() exists; a temporary drop keeping saved 0 comes back, a full drop cannot",
        START_SETID_ROOT,
        (
            call(Op.SETRESGID, -1, A, -1, gids=(U, A, 0)),
            DROP,
            call(Op.SETRESGID, -1, 0, -1, gids=(U, 0, 0)),
            REGAIN,
            call(Op.SETRESGID, A, A, A, gids=(A, A, A)),
            DROP,
            call(Op.SETRESGID, -1, 0, -1, ok=False, gids=(A, A, A)),
            call(Op.SETRESGID, 0, 0, 0, ok=False, gids=(A, A, A)),
        ),
        needs=("setresgid",),
    )


def _t_setgroups() -> Scenario:
    return Scenario(
        "SETGROUPS_CAN_CLEAR",
        "setgroups() sets the supplementary groups and can empty them",
        START_SETID_ROOT,
        (
            call(Op.SETGROUPS, A, B, groups=(A, B)),
            call(Op.SETGROUPS, groups=()),
        ),
        needs_groups=True,
    )


SCENARIOS: tuple[Scenario, ...] = (
    _t_seteuid(),
    _t_setreuid(),
    _t_setuid(),
    _t_setresuid(),
    _t_setegid(),
    _t_setregid(),
    _t_setgid(),
    _t_setresgid(),
    _t_setgroups(),
)

_BY_NAME = {s.name: s for s in SCENARIOS}


def by_name(name: str) -> Scenario:
    """The scenario called ``name``; ValueError naming the known ones if none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown probe {name!r}; known: {', '.join(_BY_NAME)}") from None


# ------------------------------------------------------------------ planning


@dataclass(frozen=True)
class IdSet:
    """The concrete ids behind U, A and B for one id family."""

    user: int
    a: int
    b: int

    def resolve(self, sym: Sym) -> int:
        if isinstance(sym, int):
            return sym
        return {U: self.user, A: self.a, B: self.b}[sym]


@dataclass(frozen=True)
class PlannedStep:
    """A concrete engine step with concrete expectations."""

    step: Step
    role: str
    ok: bool
    uids: tuple[int | None, int | None, int | None] | None
    gids: tuple[int | None, int | None, int | None] | None
    groups: tuple[int, ...] | None


@dataclass(frozen=True)
class Plan:
    scenario: Scenario
    steps: tuple[PlannedStep, ...]

    @property
    def engine_steps(self) -> list[Step]:
        return [p.step for p in self.steps]


def _triple(t: Triple | None, ids: IdSet) -> tuple[int | None, int | None, int | None] | None:
    if t is None:
        return None
    r, e, s = (None if x is None else ids.resolve(x) for x in t)
    return (r, e, s)


def _concrete(c: Call, uids: IdSet, gids: IdSet) -> PlannedStep:
    ids_for_args = gids if c.op.family in ("gid", "groups") else uids
    return PlannedStep(
        step=Step(c.op, tuple(ids_for_args.resolve(a) for a in c.args)),
        role=c.role,
        ok=c.ok,
        uids=_triple(c.uids, uids),
        gids=_triple(c.gids, gids),
        groups=None if c.groups is None else tuple(gids.resolve(g) for g in c.groups),
    )


def _expand(token: str, feats: Features) -> list[Call]:
    """The calls behind a pseudo-call, using the most direct mechanism there is.

    Setup and aux steps use setresuid/setresgid where the C library has them
    and they were seen to work, so that a broken seteuid (say) shows up only
    in the probe that tests it, and a setresuid that lies only in HASSETRESUID.
    """
    setup, aux = Role.SETUP, Role.AUX
    res_uid = feats.setresuid and feats.setresuid_works
    res_gid = feats.setresgid and feats.setresgid_works
    uid_root = (
        call(Op.SETRESUID, U, 0, 0, uids=(U, 0, 0), role=setup)
        if res_uid
        else call(Op.SETREUID, U, 0, uids=(U, 0, 0), role=setup)  # saved follows euid: 0
    )
    if token == START_SETUID_ROOT:
        return [uid_root]
    if token == START_SETID_ROOT:
        gid_root = (
            call(Op.SETRESGID, U, 0, 0, gids=(U, 0, 0), role=setup)
            if res_gid
            else call(Op.SETREGID, U, 0, gids=(U, 0, 0), role=setup)
        )
        return [gid_root, uid_root]
    # With real U and saved 0, setreuid(-1, x) leaves saved alone when x is U
    # and sets it to 0 when x is 0: the same states as setresuid gives.
    if token == DROP:
        if res_uid:
            return [call(Op.SETRESUID, -1, U, -1, uids=(U, U, 0), role=aux)]
        return [call(Op.SETREUID, -1, U, uids=(U, U, 0), role=aux)]
    if token == REGAIN:
        if res_uid:
            return [call(Op.SETRESUID, -1, 0, -1, uids=(U, 0, 0), role=aux)]
        return [call(Op.SETREUID, -1, 0, uids=(U, 0, 0), role=aux)]
    raise ValueError(f"unknown pseudo-call {token!r}")


def plan(scenario: Scenario, uids: IdSet, gids: IdSet, feats: Features) -> Plan:
    """Concrete steps for ``scenario`` with these ids on this C library."""
    calls: list[Call] = _expand(scenario.start, feats)
    for c in scenario.calls:
        calls.extend(_expand(c, feats) if isinstance(c, str) else [c])
    return Plan(scenario, tuple(_concrete(c, uids, gids) for c in calls))
