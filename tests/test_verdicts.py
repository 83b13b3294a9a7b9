"""Verdict rules, on hand-made traces (no fork): what True, False and None mean."""

from __future__ import annotations

import errno
from collections.abc import Sequence

from uidprobe.engine import Features, Outcome, Record
from uidprobe.ids import IdSet, IdTriple
from uidprobe.plan import Plan, plan
from uidprobe.probes import by_name
from uidprobe.verdicts import evaluate

IDS = IdSet(1, 2, 3)
ALL = Features(getresuid=True, setresuid=True, getresgid=True, setresgid=True)


def usesetuid_plan() -> Plan:
    return plan(by_name("USESETEUID"), IDS, IDS, ALL)


def records(
    p: Plan,
    uids: Sequence[tuple[int, int, int | None]],
    rets: Sequence[int] | None = None,
    errnos: Sequence[int] | None = None,
    kernel: Sequence[tuple[int, int, int | None]] | None = None,
) -> tuple[Record, ...]:
    """Records of ``p``'s steps with these uids (and these kernel uids, by
    default the same: no emulation)."""
    rets = rets or [0] * len(uids)
    errnos = errnos or [0] * len(uids)
    kernel = kernel or uids
    return tuple(
        Record(
            step=s.step,
            ret=ret,
            errno=err,
            uids=IdTriple(*u),
            gids=IdTriple(0, 0, 0),
            groups=(),
            kernel_uids=IdTriple(*k),
            kernel_gids=IdTriple(0, 0, 0),
        )
        for s, u, ret, err, k in zip(p.steps, uids, rets, errnos, kernel)
    )


def outcome(recs: tuple[Record, ...], completed: bool = True, sig: int | None = None) -> Outcome:
    return Outcome(records=recs, completed=completed, exit_code=None if sig else 0, signal=sig, status_known=True)


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


def test_a_c_library_that_disagrees_with_the_kernel_is_undetermined_naming_the_emulation() -> None:
    p = usesetuid_plan()
    kernel = [(0, 0, 0)] * len(GOOD)  # the C library claims every switch; the kernel saw none
    r = evaluate(p, outcome(records(p, GOOD, kernel=kernel)))
    assert r.verdict is None
    assert r.reason == (
        "cannot test here: after setresuid(1, 0, 0), the C library reports real uid 1 but the kernel "
        "holds 0: an emulated root such as fakeroot"
    )


def test_a_child_that_could_not_be_started_is_undetermined_with_the_errno() -> None:
    failed = Outcome(records=(), completed=False, error="fork failed: EAGAIN (Resource temporarily unavailable)")
    r = evaluate(usesetuid_plan(), failed)
    assert r.verdict is None and r.reason == (
        "could not start a probe child: fork failed: EAGAIN (Resource temporarily unavailable)"
    )
