"""Running the probes: the one path every probe takes.

    names -> preconditions (process) -> plans (plan) -> engine (fork, run,
    trace) -> verdicts

Nothing here changes the calling process's ids: the only set*id calls are
made by the engine's children.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

from uidprobe import probes, verdicts
from uidprobe.creds import read_creds
from uidprobe.engine import DEFAULT_TIMEOUT, Engine, Features, Outcome, default_engine
from uidprobe.ids import Family, IdSet
from uidprobe.names import DECLARED
from uidprobe.plan import Plan, plan
from uidprobe.probes import Probe
from uidprobe.process import IdsInUse, ProcessState, choose_ids, read_state
from uidprobe.verdicts import Kind, Result

#: Plans are pure functions of (probe, ids, features) and immutable: made
#: once, they are reused by every later run (planning costs milliseconds).
#: Keyed by the probe's name: hashing the Probe itself (a deep table entry)
#: would cost more than a run's other bookkeeping.
_PLANS: dict[tuple[str, IdSet, IdSet, Features], Plan] = {}


#: Verdicts already given, by (plan, outcome) identity: the engine hands a
#: repeated run's identical trace back as the same Outcome object, and
#: judging is a pure function of the two (both immutable).
_JUDGED: dict[tuple[int, int], tuple[Plan, Outcome, Result]] = {}


def _judge(p: Plan, o: Outcome) -> Result:
    hit = _JUDGED.get((id(p), id(o)))
    if hit is not None and hit[0] is p and hit[1] is o:  # the entry holds both: their ids cannot be reused
        return hit[2]
    made = verdicts.evaluate(p, o)
    if len(_JUDGED) >= 256:
        _JUDGED.clear()
    _JUDGED[(id(p), id(o))] = (p, o, made)
    return made


def _plan(p: Probe, uids: IdSet, gids: IdSet, feats: Features) -> Plan:
    key = (p.name, uids, gids, feats)
    made = _PLANS.get(key)
    if made is None:
        if len(_PLANS) >= 256:  # other ids, other features: a bound, as the lru_cache had
            _PLANS.clear()
        made = _PLANS[key] = plan(p, uids, gids, feats)
    return made


__all__ = ["DECLARED", "NAMES", "run"]

NAMES: tuple[str, ...] = (*(p.name for p in probes.PROBES), DECLARED)

_NEEDS_TEXT = (
    "{call}() is not provided by this C library (missing when uidprobe's engine was built, "
    "or failing with ENOSYS at run time)"
)


def declared_saved_ids() -> Result:
    """POSIX_SAVED_IDS from sysconf: a declaration, not an observation."""
    meaning = "sysconf(_SC_SAVED_IDS) declares saved set-user-IDs (POSIX_SAVED_IDS)"
    try:
        value = os.sysconf("SC_SAVED_IDS")
    except (ValueError, OSError):
        return Result(
            name=DECLARED,
            verdict=None,
            reason="sysconf(_SC_SAVED_IDS) is not available here",
            meaning=meaning,
            kind=Kind.DECLARED,
        )
    return Result(
        name=DECLARED,
        verdict=value > 0 if value != -1 else None,
        reason=f"declared by sysconf(_SC_SAVED_IDS) = {value}; compare with USESETEUID, which is observed",
        meaning=meaning,
        kind=Kind.DECLARED,
    )


def probing_state(engine: Engine | None = None) -> ProcessState:
    """``read_state()``, with the securebits where probing could otherwise
    start: only the engine can read them (/proc does not show them), so it
    is loaded then, before any child is forked."""
    state = read_state()
    if state.cannot_switch(Family.UID):
        return state
    caps = read_creds(caps=True, engine=engine or default_engine()).caps
    return replace(state, securebits=caps.securebits if caps is not None else None)


def _precondition(p: Probe, state: ProcessState, uids: IdSet | str, gids: IdSet | str) -> str | None:
    """Why ``p`` cannot run in this process, or None."""
    why = state.cannot_switch(p.family)
    if why:
        return why
    if isinstance(uids, str):
        return f"this process cannot test: {uids}"
    if p.family is not Family.UID and isinstance(gids, str):
        return f"this process cannot test: {gids}"
    if p.needs_groups and not state.setgroups_allowed:
        return "this process cannot test: setgroups is denied here (/proc/self/setgroups says deny)"
    return None


def _plan_all(runnable: Sequence[Probe], uids: IdSet, gids: IdSet, feats: Features) -> dict[str, Plan | Result]:
    """A plan per probe, or its verdict where a call it needs is missing."""
    out: dict[str, Plan | Result] = {}
    for p in runnable:
        missing = [op for op in p.needs if not feats.has(op)]
        if missing:
            out[p.name] = verdicts.not_run(p.name, p.meaning, False, _NEEDS_TEXT.format(call=missing[0].call))
        else:
            out[p.name] = _plan(p, uids, gids, feats)
    return out


def _probe(
    engine: Engine, runnable: Sequence[Probe], uids: IdSet, gids: IdSet | None, timeout: float
) -> dict[str, Result]:
    """Run ``runnable`` in one batch of children and judge each trace.

    Which optional calls work here is learned by one more child in the same
    batch (the first time); the plans assume what the build found, and only
    where the child shows otherwise are the affected probes planned again
    and run in a second batch.
    """
    g = gids or uids  # uid probes use no gids
    gid_for_check = gids.user if gids is not None else None
    assumed = engine.learned_features(uids.user, gid_for_check)
    check = None
    if assumed is None:
        assumed = engine.built
        check = engine.feature_check(uids.user, gid_for_check)
    planned = _plan_all(runnable, uids, g, assumed)
    plans = [x for x in planned.values() if isinstance(x, Plan)]
    batch = [p.engine_steps for p in plans] + ([check] if check else [])
    outcomes = engine.run_batch(batch, timeout)
    judged: dict[str, Result] = {p.probe.name: _judge(p, o) for p, o in zip(plans, outcomes)}
    if check is not None:
        learned = engine.learn_features(uids.user, gid_for_check, outcomes[-1])
        if learned != assumed:
            replanned = _plan_all(runnable, uids, g, learned)
            changed = [
                x
                for name, x in replanned.items()
                if not isinstance(x, Plan) or not isinstance(planned[name], Plan) or x != planned[name]
            ]
            again = [x for x in changed if isinstance(x, Plan)]
            for p, o in zip(again, engine.run_batch([p.engine_steps for p in again], timeout)):
                judged[p.probe.name] = _judge(p, o)
            planned.update(replanned)
    # A child disturbed from outside (Outcome.disturbed) showed nothing about
    # the platform: run it once more, and if it is disturbed again, say so.
    retry = [x for name, x in planned.items() if isinstance(x, Plan) and judged[name].disturbed]
    for p, o in zip(retry, engine.run_batch([p.engine_steps for p in retry], timeout) if retry else ()):
        r = _judge(p, o)
        judged[p.probe.name] = replace(r, reason=f"{r.reason}; and again when run once more") if r.disturbed else r
    return {name: judged[name] if isinstance(x, Plan) else x for name, x in planned.items()}


def run(
    names: Sequence[str] | None = None,
    *,
    uids: tuple[int, int, int] | None = None,
    gids: tuple[int, int, int] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    engine: Engine | None = None,
) -> dict[str, Result]:
    """Verdicts for ``names`` (all when None), in the order of NAMES.

    ``uids``/``gids`` are (U, A, B) to use instead of the defaults;
    ``engine`` another Engine (tests use one built without getresuid).
    ValueError for an unknown name or unusable ids.
    """
    wanted = list(NAMES) if names is None else list(dict.fromkeys(names))
    selected = [probes.by_name(n) for n in wanted if n != DECLARED]  # ValueError naming the known ones
    state = probing_state(engine) if selected else read_state()
    if (uids is not None and gids is not None) or not selected:
        return _run_with(wanted, selected, state, _chosen(state, uids, gids, None), timeout, engine)
    # Default ids: ones no running process holds and no account names.
    # Finding them (every process's ids, the account databases) costs more
    # than the batch, so the batch runs meanwhile with the ids chosen last
    # time (or, the first time, the first candidates), and runs again only
    # where the choice differs.
    key = (state.uid_map, state.gid_map, uids, gids)
    guess = _LAST_CHOICE.get(key) or _chosen(state, uids, gids, IdsInUse(named=lambda family, i: False))
    chosen = IdsInUse.look(lambda in_use: _chosen(state, uids, gids, in_use))  # ids given were valid: no raise
    results = _run_with(wanted, selected, state, guess, timeout, engine)
    ids = chosen()
    _LAST_CHOICE.clear()  # one entry: the maps of this process's namespace
    _LAST_CHOICE[key] = ids
    if ids != guess:
        results = _run_with(wanted, selected, state, ids, timeout, engine)
    return results


#: The ids the last run chose, by (uid map, gid map, uids, gids) asked.
_LAST_CHOICE: dict[tuple[object, ...], tuple[IdSet | str, IdSet | str]] = {}


def _chosen(
    state: ProcessState, uids: tuple[int, int, int] | None, gids: tuple[int, int, int] | None, in_use: IdsInUse | None
) -> tuple[IdSet | str, IdSet | str]:
    return choose_ids(state.uid_map, "uid", uids, in_use), choose_ids(state.gid_map, "gid", gids, in_use)


def _run_with(
    wanted: list[str],
    selected: list[Probe],
    state: ProcessState,
    ids: tuple[IdSet | str, IdSet | str],
    timeout: float,
    engine: Engine | None,
) -> dict[str, Result]:
    """``run`` with these (uid, gid) choices (a str: why there are none)."""
    uid_set, gid_set = ids
    results: dict[str, Result] = {}
    runnable = []
    for p in selected:
        why = _precondition(p, state, uid_set, gid_set)
        if why:
            results[p.name] = verdicts.not_run(p.name, p.meaning, None, why)
        else:
            runnable.append(p)
    if runnable:
        assert isinstance(uid_set, IdSet)  # _precondition refused every probe otherwise
        gid_ids = gid_set if isinstance(gid_set, IdSet) else None
        results.update(_probe(engine or default_engine(), runnable, uid_set, gid_ids, timeout))
    if DECLARED in wanted:
        results[DECLARED] = declared_saved_ids()
    return {n: results[n] for n in wanted}
