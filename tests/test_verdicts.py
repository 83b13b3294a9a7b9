"""Verdict rules, on hand-made traces (no fork): what True, False and None mean."""

from __future__ import annotations

import errno
from collections.abc import Sequence

from uidprobe.engine import Features, Outcome, Record
from uidprobe.scenarios import IdSet, Plan, by_name, plan
from uidprobe.verdicts import evaluate

IDS = IdSet(1, 2, 3)
ALL = Features(True, True, True, True)


def usesetuid_plan() -> Plan:
    return plan(by_name("USESETEUID"), IDS, IDS, ALL)


def records(
    p: Plan,
    uids: Sequence[tuple[int, int, int | None]],
    rets: Sequence[int] | None = None,
    errnos: Sequence[int] | None = None,
) -> tuple[Record, ...]:
    rets = rets or [0] * len(uids)
    errnos = errnos or [0] * len(uids)
    return tuple(Record(s.step, ret, err, u, (0, 0, 0), ()) for s, u, ret, err in zip(p.steps, uids, rets, errnos))


def outcome(recs: tuple[Record, ...], completed: bool = True, sig: int | None = None) -> Outcome:
    return Outcome(recs, completed, False, None if sig else 0, sig, True)


GOOD: list[tuple[int, int, int | None]] = [(1, 0, 0), (1, 2, 0), (1, 0, 0), (1, 3, 0), (1, 0, 0)]


def test_all_expectations_met_gives_true() -> None:
    p = usesetuid_plan()
    r = evaluate(p, outcome(records(p, GOOD)))
    assert r.verdict is True and r.value == 1


def test_saved_uid_moving_with_effective_gives_false_naming_the_call() -> None:
    p = usesetuid_plan()
    bad: list[tuple[int, int, int | None]] = [(1, 0, 0), (1, 2, 2), (1, 2, 2), (1, 3, 3), (1, 3, 3)]
    r = evaluate(p, outcome(records(p, bad)))
    assert r.verdict is False
    assert r.reason == "after seteuid(2): saved uid is 2, should be 0"
    assert r.value == 0


def test_a_call_that_succeeds_but_leaves_ids_wrong_is_false_not_true() -> None:
    # Return values alone never decide: ret 0 everywhere, ids wrong.
    p = usesetuid_plan()
    wrong: list[tuple[int, int, int | None]] = [(1, 0, 0), (1, 2, 0), (1, 2, 0), (1, 3, 0), (1, 0, 0)]
    assert evaluate(p, outcome(records(p, wrong))).verdict is False


def test_failed_start_state_is_undetermined_not_false() -> None:
    p = usesetuid_plan()
    recs = records(p, [(0, 0, 0)], rets=[-1], errnos=[errno.EPERM])
    r = evaluate(p, outcome(recs))
    assert r.verdict is None
    assert r.reason.startswith("could not establish the start state: setresuid(1, 0, 0) failed: EPERM")


def test_eperm_while_privileged_is_a_policy_so_undetermined() -> None:
    p = usesetuid_plan()
    recs = records(p, [(1, 0, 0), (1, 0, 0)], rets=[0, -1], errnos=[0, errno.EPERM])
    r = evaluate(p, outcome(recs, completed=False))
    assert r.verdict is None and "security policy" in r.reason


def test_eperm_after_dropping_privilege_is_the_platforms_answer_so_false() -> None:
    p = usesetuid_plan()
    recs = records(p, [(1, 0, 0), (1, 2, 2), (1, 2, 2)], rets=[0, 0, -1], errnos=[0, 0, errno.EPERM])
    assert evaluate(p, outcome(recs)).verdict is False


def test_child_that_dies_before_finishing_is_undetermined() -> None:
    p = usesetuid_plan()
    r = evaluate(p, outcome(records(p, GOOD[:2]), completed=False, sig=11))
    assert r.verdict is None and r.reason == "probe child was killed by SIGSEGV after 2 step(s)"
    assert r.trace[2].record is None


def test_unreadable_saved_ids_still_give_true_and_say_they_were_inferred() -> None:
    p = usesetuid_plan()
    unknown: list[tuple[int, int, int | None]] = [(u[0], u[1], None) for u in GOOD]
    r = evaluate(p, outcome(records(p, unknown)))
    assert r.verdict is True and "inferred" in r.reason


def test_trace_lines_say_what_should_be_and_what_is() -> None:
    p = usesetuid_plan()
    r = evaluate(p, outcome(records(p, GOOD)))
    assert r.trace[1].describe() == (
        "seteuid(2) [check, must succeed]: ok; "
        "uid should be real 1 / effective 2 / saved 0, is real 1 / effective 2 / saved 0"
    )
