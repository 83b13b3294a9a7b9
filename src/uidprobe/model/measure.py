"""Measuring the model: one child per (state, call)."""

from __future__ import annotations

import errno as errno_mod
import os
from collections.abc import Callable

from uidprobe.engine import DEFAULT_TIMEOUT, Engine, Features, Op, Outcome, Step, Transport, default_engine
from uidprobe.ids import Family, validate_ids
from uidprobe.model.data import DEFAULT_A, DEFAULT_B, Model, State, Transition, all_calls, all_states, num, sym

__all__ = ["CHUNK_STATES", "build"]

#: States measured per engine call when progress is reported (88 children each).
CHUNK_STATES = 1


def _setup(family: Family, state: State, ids: dict[str, int], feats: Features) -> list[Step]:
    r, e, s = (num(x, ids) for x in state)
    if family is Family.UID:
        if feats.usable(Op.SETRESUID):
            return [Step(Op.SETRESUID, (r, e, s))]
        # setreuid(r, s) gives (r, s, s); seteuid(e) then needs privilege or e in {r, s}.
        return [Step(Op.SETREUID, (r, s)), Step(Op.SETEUID, (e,))]
    a = ids["A"]
    gid_steps = (
        [Step(Op.SETRESGID, (r, e, s))]
        if feats.usable(Op.SETRESGID)
        else [Step(Op.SETREGID, (r, s)), Step(Op.SETEGID, (e,))]
    )
    drop = Step(Op.SETRESUID, (a, a, a)) if feats.usable(Op.SETRESUID) else Step(Op.SETREUID, (a, a))
    return [*gid_steps, drop]


def _established(family: Family, state: State, ids: dict[str, int], out: Outcome, nsetup: int) -> str | None:
    """None when the child confirmed the start state by read-back, else why not."""
    if len(out.records) < nsetup:
        return out.describe_end()
    want = tuple(num(x, ids) for x in state)
    for rec in out.records[:nsetup]:
        if not rec.ok:
            return f"{rec.step} {rec.describe_result()}"
    last = out.records[nsetup - 1]
    got = last.uids if family is Family.UID else last.gids
    if any(g is not None and g != w for g, w in zip(got, want)):
        return f"read back {got} after {last.step}, wanted {want}"
    if family is Family.GID and last.uids[1] == 0:
        return "could not drop the uid to make gid calls unprivileged"
    return None


def build(
    family: Family | str = Family.UID,
    *,
    a: int = DEFAULT_A,
    b: int = DEFAULT_B,
    timeout: float = DEFAULT_TIMEOUT,
    engine: Engine | None = None,
    via: Transport | str = Transport.AUTO,
    jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Model:
    """Measure the model: one child per (state, call).

    ``jobs`` runners work at once (default: one per CPU, at most 4).
    ``progress(done, total)``, if given, is called after each group of
    CHUNK_STATES states (the children then run in one engine call per group
    instead of one for the whole model; the results are the same).
    """
    try:
        family = Family(family)
    except ValueError:
        raise ValueError(f"family must be 'uid' or 'gid', not {family!r}") from None
    from uidprobe.store import current_fingerprint

    validate_ids((a, b), "model id", names=("A", "B"))
    eng = engine or default_engine()
    ids = {"A": a, "B": b}
    feats = eng.features(a, a, timeout)
    states = all_states()
    calls = all_calls(family)
    work: list[list[Step]] = []
    nsetup: dict[State, int] = {}
    for st in states:
        setup = _setup(family, st, ids, feats)
        nsetup[st] = len(setup)
        for op, args in calls:
            work.append([*setup, Step(op, tuple(num(x, ids) for x in args))])
    if jobs is None:
        jobs = min(4, os.cpu_count() or 1)
    chunk = len(work) if progress is None else CHUNK_STATES * len(calls)
    outcomes: list[Outcome] = []
    for lo in range(0, len(work), chunk):
        outcomes += eng.run_batch(work[lo : lo + chunk], timeout, via, jobs)
        if progress is not None:
            progress(len(outcomes), len(work))

    state_why: dict[State, str | None] = {}
    transitions = []
    it = iter(outcomes)
    for st in states:
        first: str | None = None
        for (op, args), out in zip(calls, it):
            why = _established(family, st, ids, out, nsetup[st])
            if why is not None:
                first = first or why
                transitions.append(_not_run(st, op, args, f"state not established: {why}"))
                continue
            if len(out.records) <= nsetup[st]:
                transitions.append(_not_run(st, op, args, out.describe_end()))
                continue
            rec = out.records[nsetup[st]]
            ids3 = rec.uids if family is Family.UID else rec.gids
            transitions.append(
                Transition(
                    start=st,
                    call=op.call,
                    args=args,
                    ret=rec.ret,
                    errno=None if rec.ok else errno_mod.errorcode.get(rec.errno, str(rec.errno)),
                    end=(sym(ids3[0], ids), sym(ids3[1], ids), sym(ids3[2], ids)),
                )
            )
        # A state is "established" when every child established it.
        state_why[st] = first
    return Model(
        family=family, ids=ids, fingerprint=current_fingerprint(), states=state_why, transitions=tuple(transitions)
    )


def _not_run(start: State, op: Op, args: tuple[str, ...], note: str) -> Transition:
    return Transition(start=start, call=op.call, args=args, ret=None, errno=None, end=None, note=note)
