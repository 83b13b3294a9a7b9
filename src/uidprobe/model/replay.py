"""The uid probes' verdicts, replayed through a model into the live verdict code."""

from __future__ import annotations

import errno as errno_mod
from collections.abc import Sequence
from typing import Any

from uidprobe import probes, verdicts
from uidprobe.engine import Features, Outcome, Record, Step
from uidprobe.ids import Family, IdSet, IdTriple
from uidprobe.model.data import SYMBOLS, Model, State, Transition, num, sym
from uidprobe.plan import plan

__all__ = ["derive_verdicts"]


def derive_verdicts(model: Model) -> dict[str, verdicts.Result]:
    """The uid probes' verdicts, by replaying their calls through the model.

    Replays each uid probe with U = A and both of its other ids = B (the
    model has two ordinary ids), feeding the model's recorded results to the
    same ``verdicts.evaluate`` the live probes use.  The gid model is made
    without privilege and cannot replay the gid probes, so only uid probes
    are derived.
    """
    if model.family is not Family.UID:
        raise ValueError("verdicts are derived from the uid model")
    table = model.lookup()
    works = any(t.call == "setresuid" and t.errno != "ENOSYS" and t.ret is not None for t in model.transitions)
    feats = Features(getresuid=True, setresuid=works, getresgid=True, setresgid=True)
    idset = IdSet(user=model.ids["A"], a=model.ids["B"], b=model.ids["B"])
    results = {}
    for p in probes.PROBES:
        if p.family is not Family.UID:
            continue
        missing = [op for op in p.needs if not feats.has(op)]
        if missing:
            results[p.name] = verdicts.not_run(p.name, p.meaning, False, f"{missing[0].call}() fails with ENOSYS")
            continue
        planned = plan(p, idset, idset, feats)
        replayed = _replay(planned.engine_steps, model, table)
        if isinstance(replayed, str):
            results[p.name] = verdicts.not_run(p.name, p.meaning, None, replayed)
        else:
            results[p.name] = verdicts.evaluate(planned, replayed)
    return results


_NO_GIDS = IdTriple(0, 0, 0)  # the uid model says nothing of gids: the uid probes check none


def _record(step: Step, ret: int, err: int, uids: IdTriple) -> Record:
    return Record(step=step, ret=ret, errno=err, uids=uids, gids=_NO_GIDS, groups=())


def _replay(steps: Sequence[Step], model: Model, table: dict[Any, Transition]) -> Outcome | str:
    """The trace the probe would have seen, from the model; or why the model
    cannot tell (a state on the path was never established)."""
    ids = model.ids
    start: State = ("A", "0", "0")  # what the probes' setup establishes, with U = A
    first = steps[0]
    if model.states.get(start) is not None:
        return Outcome(records=(_record(first, -1, errno_mod.EPERM, _NO_GIDS),), completed=True)
    records = [_record(first, 0, 0, IdTriple(*(num(x, ids) for x in start)))]
    state = start
    for step in steps[1:]:
        args = tuple("-1" if a == -1 else sym(a, ids) for a in step.args)
        t = table.get((state, step.op.call, args))
        if t is None or t.ret is None or t.end is None:
            why = t.note if t is not None else "not in the model"
            return f"the model cannot replay {step} from ({','.join(state)}): {why}"
        err = 0 if t.errno is None else getattr(errno_mod, t.errno, 0)
        r, e, s = (None if x == "?" else num(x, ids) if x in SYMBOLS else int(x) for x in t.end)
        assert r is not None and e is not None  # only the saved id can be unreadable
        records.append(_record(step, t.ret, err, IdTriple(r, e, s)))
        state = t.end
    return Outcome(records=tuple(records), completed=True)
