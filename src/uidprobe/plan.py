"""Planning: a probe, concrete ids and this C library's features -> engine steps.

The probe table says *what* to check with symbolic ids; a plan says *how*,
here: the symbols become numbers, and the pseudo-calls (establish the start
state, drop or regain the effective uid) become the most direct calls this C
library offers and was seen to honour at run time.  So a broken seteuid
shows up only in the probe that tests seteuid, and a setresuid that lies
only in HASSETRESUID.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from uidprobe.engine import Features, Op, Step
from uidprobe.ids import IdPattern, IdSet
from uidprobe.probes import Call, Probe, Pseudo, Role, Sym, SymPattern, U, Who, call

__all__ = ["Plan", "PlannedStep", "plan"]


@dataclass(frozen=True)
class PlannedStep:
    """A concrete engine step with concrete expectations."""

    step: Step
    role: Role
    ok: bool
    uids: IdPattern | None
    gids: IdPattern | None
    groups: tuple[int, ...] | None
    #: the filesystem id the call must leave: every set*uid call sets fsuid
    #: to the new effective uid (Linux), so a C library that leaves it at
    #: root has not really switched; None: not checked
    fsuid: int | None = None
    fsgid: int | None = None
    #: what the child's second thread must read back (Op.THREAD_START)
    sibling_uids: IdPattern | None = None
    sibling_gids: IdPattern | None = None
    sibling_groups: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Plan:
    """One probe, ready for the engine."""

    probe: Probe
    steps: tuple[PlannedStep, ...]

    @functools.cached_property
    def engine_steps(self) -> tuple[Step, ...]:
        """The steps the engine runs; one object per Plan (plans are cached),
        which lets the engine recognise a repeated run's trace."""
        return tuple(p.step for p in self.steps)


def _resolve(sym: Sym, ids: IdSet) -> int:
    if isinstance(sym, int):
        return sym
    return {Who.U: ids.user, Who.A: ids.a, Who.B: ids.b}[sym]


def _pattern(t: SymPattern | None, ids: IdSet) -> IdPattern | None:
    if t is None:
        return None
    r, e, s = (None if x is None else _resolve(x, ids) for x in t)
    return (r, e, s)


def _concrete(c: Call, uids: IdSet, gids: IdSet) -> PlannedStep:
    ids_for_args = uids if c.op.family == "uid" else gids
    uid_pattern, gid_pattern = _pattern(c.uids, uids), _pattern(c.gids, gids)
    return PlannedStep(
        step=Step(c.op, tuple(_resolve(a, ids_for_args) for a in c.args)),
        role=c.role,
        ok=c.ok,
        uids=uid_pattern,
        gids=gid_pattern,
        groups=None if c.groups is None else tuple(_resolve(g, gids) for g in c.groups),
        fsuid=uid_pattern[1] if c.op.family == "uid" and uid_pattern else None,
        fsgid=gid_pattern[1] if c.op.family == "gid" and gid_pattern else None,
        sibling_uids=_pattern(c.sibling_uids, uids),
        sibling_gids=_pattern(c.sibling_gids, gids),
        sibling_groups=None if c.sibling_groups is None else tuple(_resolve(g, gids) for g in c.sibling_groups),
    )


def _expand(pseudo: Pseudo, feats: Features) -> list[Call]:
    """The calls behind a pseudo-call, using the most direct mechanism there is."""
    setup, aux = Role.SETUP, Role.AUX
    res_uid = feats.setresuid and feats.setresuid_works
    res_gid = feats.setresgid and feats.setresgid_works
    uid_root = (
        call(Op.SETRESUID, U, 0, 0, uids=(U, 0, 0), role=setup)
        if res_uid
        else call(Op.SETREUID, U, 0, uids=(U, 0, 0), role=setup)  # saved follows euid: 0
    )
    if pseudo is Pseudo.SETUID_ROOT:
        return [uid_root]
    if pseudo is Pseudo.SETID_ROOT:
        gid_root = (
            call(Op.SETRESGID, U, 0, 0, gids=(U, 0, 0), role=setup)
            if res_gid
            else call(Op.SETREGID, U, 0, gids=(U, 0, 0), role=setup)
        )
        return [gid_root, uid_root]
    # With real U and saved 0, setreuid(-1, x) leaves saved alone when x is U
    # and sets it to 0 when x is 0: the same states as setresuid gives.
    euid = U if pseudo is Pseudo.DROP else 0
    if res_uid:
        return [call(Op.SETRESUID, -1, euid, -1, uids=(U, euid, 0), role=aux)]
    return [call(Op.SETREUID, -1, euid, uids=(U, euid, 0), role=aux)]


def plan(probe: Probe, uids: IdSet, gids: IdSet, feats: Features) -> Plan:
    """Concrete steps for ``probe`` with these ids on this C library."""
    calls: list[Call] = _expand(probe.start, feats)
    for c in probe.calls:
        calls.extend(_expand(c, feats) if isinstance(c, Pseudo) else [c])
    return Plan(probe=probe, steps=tuple(_concrete(c, uids, gids) for c in calls))
