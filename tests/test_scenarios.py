"""Scenarios are data; these pin the properties every entry must have."""

from __future__ import annotations

import pytest

from uidprobe.engine import Features, Op
from uidprobe.scenarios import SCENARIOS, Call, IdSet, Role, by_name, plan

IDS = IdSet(1, 2, 3)
ALL = Features(True, True, True, True)
NONE = Features(False, False, False, False)


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.name)
def test_every_call_checks_ids_read_back_not_just_the_return_value(sc: object) -> None:
    for p in plan(sc, IDS, IDS, ALL).steps:  # type: ignore[arg-type]
        assert p.uids is not None or p.gids is not None or p.groups is not None, p.step


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.name)
def test_every_plan_starts_by_establishing_the_start_state(sc: object) -> None:
    steps = plan(sc, IDS, IDS, ALL).steps  # type: ignore[arg-type]
    assert steps[0].role == Role.SETUP
    assert any(p.role == Role.CHECK for p in steps)


def test_names_are_unique() -> None:
    names = [s.name for s in SCENARIOS]
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
    c = Call(Op.SETUID, (0,))
    assert (c.ok, c.role) == (True, Role.CHECK)
