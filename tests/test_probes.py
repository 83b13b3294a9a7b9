"""Probes are data, and plans turn them into engine steps: the properties
every entry and every plan must have."""

from __future__ import annotations

import pytest

from uidprobe.engine import Features, Op
from uidprobe.ids import IdSet
from uidprobe.plan import plan
from uidprobe.probes import PROBES, Call, Probe, Role, by_name

IDS = IdSet(1, 2, 3)
ALL = Features(getresuid=True, setresuid=True, getresgid=True, setresgid=True)
NONE = Features(getresuid=False, setresuid=False, getresgid=False, setresgid=False)


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
def test_every_call_checks_ids_read_back_not_just_the_return_value(probe: Probe) -> None:
    for p in plan(probe, IDS, IDS, ALL).steps:
        assert p.uids is not None or p.gids is not None or p.groups is not None, p.step


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
def test_every_plan_starts_by_establishing_the_start_state(probe: Probe) -> None:
    steps = plan(probe, IDS, IDS, ALL).steps
    assert steps[0].role is Role.SETUP
    assert any(p.role is Role.CHECK for p in steps)


def test_names_are_unique() -> None:
    names = [p.name for p in PROBES]
    assert len(names) == len(set(names))


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown probe 'NOPE'; known: USESETEUID"):
        by_name("NOPE")


def test_start_state_uses_setresuid_where_the_c_library_has_it() -> None:
    first = plan(by_name("USESETEUID"), IDS, IDS, ALL).steps[0]
    assert (first.step.op, first.step.args, first.uids) == (Op.SETRESUID, (1, 0, 0), (1, 0, 0))


def test_start_state_falls_back_to_setreuid_without_setresuid() -> None:
    first = plan(by_name("USESETEUID"), IDS, IDS, NONE).steps[0]
    assert (first.step.op, first.step.args) == (Op.SETREUID, (1, 0))


def test_a_setresuid_seen_to_lie_is_not_used_to_set_up_or_drop() -> None:
    liar = Features(getresuid=True, setresuid=True, getresgid=True, setresgid=True, setresuid_works=False)
    ops = [p.step.op for p in plan(by_name("USESETEGID"), IDS, IDS, liar).steps if p.role is not Role.CHECK]
    assert Op.SETRESUID not in ops and Op.SETREUID in ops and Op.SETRESGID in ops


def test_gid_probes_check_the_comeback_with_the_effective_uid_dropped() -> None:
    steps = plan(by_name("USESETEGID"), IDS, IdSet(11, 12, 13), ALL).steps
    calls = [str(p.step) for p in steps]
    assert calls[:5] == [
        "setresgid(11, 0, 0)",
        "setresuid(1, 0, 0)",
        "setegid(12)",
        "setresuid(-1, 1, -1)",
        "setegid(0)",
    ]


def test_symbolic_ids_resolve_per_family() -> None:
    steps = plan(by_name("SETGROUPS_CAN_CLEAR"), IDS, IdSet(11, 12, 13), ALL).steps
    assert steps[-2].step.args == (12, 13) and steps[-2].groups == (12, 13)


def test_a_call_defaults_to_a_check_that_must_succeed() -> None:
    c = Call(op=Op.SETUID, args=(0,))
    assert (c.ok, c.role) == (True, Role.CHECK)
