"""Running the probes: preconditions, plans, one child per scenario, verdicts.

Data flows one way: scenario (data) -> plan (concrete ids) -> engine (fork,
run, trace) -> verdict.  Nothing here changes the calling process's ids: the
only set*id calls are made by the engine's children.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Sequence
from typing import Any

from uidprobe import engine, scenarios, verdicts
from uidprobe.names import DECLARED
from uidprobe.process import ProcessState, choose_ids, read_state
from uidprobe.scenarios import IdSet, Plan, Scenario
from uidprobe.verdicts import Result

__all__ = ["DECLARED", "NAMES", "run"]

NAMES: tuple[str, ...] = (*(s.name for s in scenarios.SCENARIOS), DECLARED)

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
        return Result(DECLARED, None, "sysconf(_SC_SAVED_IDS) is not available here", (), meaning, "declared")
    verdict = value > 0 if value != -1 else None
    reason = f"declared by sysconf(_SC_SAVED_IDS) = {value}; compare with USESETEUID, which is observed"
    return Result(DECLARED, verdict, reason, (), meaning, "declared")


_FEATURES: dict[tuple[int, int | None, int | None], engine.Features] = {}


def runtime_features(
    timeout: float, module: Any = None, uid: int | None = None, gid: int | None = None
) -> engine.Features:
    """The optional calls that exist at build time *and* work at run time.

    A C library may export setresuid as a stub that fails with ENOSYS (glibc
    does so where the kernel lacks the call), and a sandbox may refuse it the
    same way: ``setresuid(-1, -1, -1)`` changes nothing and is allowed to
    anyone, so it answers that.  A call may also report success and change
    nothing: with ``uid``/``gid`` (ordinary ids a privileged caller can
    switch to), the child also sets real ``uid``/``gid`` and reads them
    back, and a call that lies is not used to set up the probes.  One child
    answers all of it; the answer is kept for the life of the process.
    """
    key = (id(module), uid, gid)
    if key not in _FEATURES:
        _FEATURES[key] = _measure_features(timeout, module, uid, gid)
    return _FEATURES[key]


def _measure_features(timeout: float, module: Any, uid: int | None, gid: int | None) -> engine.Features:
    built = engine.features(module)
    if not (built.setresuid or built.setresgid):
        return built
    op, step = engine.Op, engine.Step
    steps = [step(op.SETRESUID, (-1, -1, -1)), step(op.SETRESGID, (-1, -1, -1))]
    if gid is not None and built.setresgid:
        steps.append(step(op.SETRESGID, (gid, 0, 0)))
    if uid is not None and built.setresuid:
        steps.append(step(op.SETRESUID, (uid, 0, 0)))
    out = engine.run(steps, timeout, module)
    if not out.completed:  # cannot tell (no child, crash): keep what the build found
        return built
    by_op: dict[engine.Op, list[engine.Record]] = {}
    for r in out.records:
        by_op.setdefault(r.step.op, []).append(r)

    def exists(which: engine.Op) -> bool:
        return by_op[which][0].errno != errno.ENOSYS

    def truthful(which: engine.Op, target: int | None) -> bool:
        """False when setting real ``target`` reported success but did not happen."""
        recs = by_op[which]
        if target is None or len(recs) < 2 or not recs[1].ok:
            return True
        ids = recs[1].uids if which is engine.Op.SETRESUID else recs[1].gids
        return ids[0] == target and ids[1] == 0

    return dataclasses.replace(
        built,
        setresuid=built.setresuid and exists(op.SETRESUID),
        setresgid=built.setresgid and exists(op.SETRESGID),
        setresuid_works=truthful(op.SETRESUID, uid),
        setresgid_works=truthful(op.SETRESGID, gid),
    )


def _precondition(sc: Scenario, state: ProcessState, uids: IdSet | str, gids: IdSet | str) -> str | None:
    """Why ``sc`` cannot run in this process, or None."""
    why = state.cannot_switch(sc.family)
    if why:
        return why
    if isinstance(uids, str):
        return f"this process cannot test: {uids}"
    if sc.family != "uid" and isinstance(gids, str):
        return f"this process cannot test: {gids}"
    if sc.needs_groups and not state.setgroups_allowed:
        return "this process cannot test: setgroups is denied here (/proc/self/setgroups says deny)"
    return None


def run(
    names: Sequence[str] | None = None,
    *,
    uids: tuple[int, int, int] | None = None,
    gids: tuple[int, int, int] | None = None,
    timeout: float = engine.DEFAULT_TIMEOUT,
    module: Any = None,
) -> dict[str, Result]:
    """Verdicts for ``names`` (all when None), in the order of NAMES.

    ``uids``/``gids`` are (U, A, B) to use instead of the defaults;
    ``module`` is another build of the engine (tests use one built without
    getresuid).
    """
    wanted = list(NAMES) if names is None else list(dict.fromkeys(names))
    for n in wanted:
        if n != DECLARED:
            scenarios.by_name(n)  # ValueError naming the known probes
    state = read_state()
    uid_set = choose_ids(state.uid_map, "uid", uids, state.overflow_ids)
    gid_set = choose_ids(state.gid_map, "gid", gids, state.overflow_ids)

    results: dict[str, Result] = {}
    plans: list[Plan] = []
    feats: engine.Features | None = None
    for name in wanted:
        if name == DECLARED:
            continue
        sc = scenarios.by_name(name)
        why = _precondition(sc, state, uid_set, gid_set)
        if why:
            results[name] = verdicts.not_run(name, sc.meaning, None, why)
            continue
        feats = feats or runtime_features(
            timeout,
            module,
            uid_set.user if isinstance(uid_set, IdSet) else None,
            gid_set.user if isinstance(gid_set, IdSet) else None,
        )
        missing = [n for n in sc.needs if not getattr(feats, n)]
        if missing:
            results[name] = verdicts.not_run(name, sc.meaning, False, _NEEDS_TEXT.format(call=missing[0]))
            continue
        assert isinstance(uid_set, IdSet)
        g = gid_set if isinstance(gid_set, IdSet) else uid_set  # uid probes do not use gids
        plans.append(scenarios.plan(sc, uid_set, g, feats))

    if plans:
        outcomes = engine.run_batch([p.engine_steps for p in plans], timeout, module)
        for p, o in zip(plans, outcomes):
            results[p.scenario.name] = verdicts.evaluate(p, o)
    if DECLARED in wanted:
        results[DECLARED] = declared_saved_ids()
    return {n: results[n] for n in wanted}
