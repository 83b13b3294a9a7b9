"""Privilege switching: mechanism choice, order, and every verification path."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from helpers import requires_root, run_python
from procinfo import identity
from uidprobe.engine import MAX_SWITCH_GROUPS
from uidprobe.privileges import (
    InvalidTargetError,
    Mechanism,
    NoMechanismError,
    PrivilegeError,
    Switcher,
    choose_mechanism,
    current_identity,
)

ALL = {
    "HASSETRESUID": 1,
    "HASSETRESGID": 1,
    "HASSETREUID": 1,
    "HASSETREGID": 1,
    "USESETEUID": 1,
    "USESETEGID": 1,
}
RE_ONLY = {"HASSETREUID": 1, "HASSETREGID": 1}
E_ONLY = {"USESETEUID": 1, "USESETEGID": 1}


# ------------------------------------------------------------ choosing


def test_setresuid_is_preferred_when_its_verdicts_hold() -> None:
    assert choose_mechanism(ALL) == Mechanism("setresuid", "setresgid")


def test_setreuid_is_next_then_seteuid() -> None:
    assert choose_mechanism({**ALL, "HASSETRESUID": 0}).uid == "setreuid"
    assert choose_mechanism(E_ONLY) == Mechanism("seteuid", "setegid")


def test_families_are_chosen_separately() -> None:
    assert choose_mechanism({"HASSETREUID": 1, "USESETEGID": 1}) == Mechanism("setreuid", "setegid")


def test_no_mechanism_names_the_verdicts_that_forced_the_refusal() -> None:
    with pytest.raises(NoMechanismError) as e:
        choose_mechanism({"USESETEGID": 1, "HASSETREUID": 0})
    assert str(e.value) == (
        "no uid mechanism can switch and come back here: HASSETRESUID=0, HASSETREUID=0, USESETEUID=0 "
        "(see 'uidprobe explain USESETEUID')"
    )


# ------------------------------------------------------------ validation


@requires_root
@pytest.mark.parametrize(
    ("uid", "gid", "groups", "phrase"),
    [
        (-1, 5, (), "uid -1 means 'unchanged'"),
        (0xFFFFFFFF, 5, (), "uid -1 means 'unchanged'"),
        (5, -1, (), "gid -1 means 'unchanged'"),
        (5, 5, (7, -1), "supplementary group -1"),
        (True, 5, (), "uid must be an integer"),
        (5.0, 5, (), "uid must be an integer"),
        ("5", 5, (), "no user named '5'"),
        (2**32, 5, (), "out of range"),
        (
            5,
            5,
            range(min(os.sysconf("SC_NGROUPS_MAX"), MAX_SWITCH_GROUPS) + 1),
            f"exceed the limit: uidprobe's switch sets and verifies at most {MAX_SWITCH_GROUPS}, "
            f"and the kernel allows {os.sysconf('SC_NGROUPS_MAX')}",
        ),
    ],
)
def test_bad_targets_are_refused_before_anything_changes(uid: Any, gid: Any, groups: Any, phrase: str) -> None:
    sw = Switcher(ALL)
    before = identity()
    with pytest.raises(InvalidTargetError, match=phrase):
        sw.become(uid, gid, groups)
    with pytest.raises(InvalidTargetError, match=phrase):
        sw.drop_permanently(uid, gid, groups)
    assert identity() == before and not sw.switched


def test_dropping_to_root_is_refused() -> None:
    with pytest.raises(InvalidTargetError, match="drops nothing"):
        Switcher(ALL).drop_permanently(0, 0)


# ------------------------------------------------------------ switching


@requires_root
@pytest.mark.parametrize("values", [ALL, RE_ONLY, E_ONLY], ids=["res", "re", "e"])
def test_become_and_restore_with_each_mechanism(values: dict[str, int]) -> None:
    sw = Switcher(values)
    before = current_identity()
    with sw.as_user(1001, 1002, [7, 8]) as inside:
        assert inside.uids[1] == 1001 and inside.gids[1] == 1002
        assert inside.groups == (7, 8) and (inside.fsuid, inside.fsgid) == (1001, 1002)
        assert 0 in (inside.uids[0], inside.uids[2])  # the way back is kept
    assert current_identity() == before


@requires_root
def test_switched_identity_really_governs_file_access() -> None:
    # pytest's tmp_path is 0700 root: as 1001 we must not even reach it.
    d = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        d.chmod(0o777)
        with Switcher(ALL).as_user(1001, 1002):
            (d / "made").write_text("x")
        st = (d / "made").stat()
        assert (st.st_uid, st.st_gid) == (1001, 1002)
    finally:
        shutil.rmtree(d)


@requires_root
def test_switching_twice_without_restore_is_refused() -> None:
    sw = Switcher(ALL)
    with sw.as_user(1001, 1001), pytest.raises(PrivilegeError, match="already switched"):
        sw.become(1002, 1002)


def test_restore_without_a_switch_is_refused() -> None:
    with pytest.raises(PrivilegeError, match="nothing to restore"):
        Switcher(ALL).restore()


@requires_root
@pytest.mark.parametrize("values", [ALL, RE_ONLY, E_ONLY], ids=["res", "re", "e"])
def test_leaving_root_sets_groups_then_gid_then_uid_and_returning_reverses_it(values: dict[str, int]) -> None:
    forward, back = Switcher(values).plan(1001, 1001, [5])
    assert [s.op.family for s in forward] == ["groups", "gid", "uid"]
    families = [s.op.family for s in back]
    assert families == sorted(families, key=["uid", "gid", "groups"].index) and families[-1] == "groups"


@requires_root
def test_a_switch_applies_to_every_thread_of_the_process() -> None:
    # Documented: glibc's set*id wrappers change all threads, not just the caller.
    go, seen_in, back, seen_out = threading.Event(), [], threading.Event(), []

    def other() -> None:
        go.wait(10)
        seen_in.append(current_identity().uids)
        back.wait(10)
        seen_out.append(current_identity().uids)

    t = threading.Thread(target=other)
    t.start()
    sw = Switcher(ALL)
    sw.become(1001, 1001)
    go.set()
    while not seen_in:
        threading.Event().wait(0.01)
    sw.restore()
    back.set()
    t.join(10)
    assert seen_in == [(0, 1001, 0)] and seen_out == [(0, 0, 0)]


# ------------------------------------------------------------ verification failures


def switch_in_subprocess(faults_so: Path, profile: str, body: str) -> dict[str, Any]:
    code = (
        "import json, os\n"
        "from uidprobe.privileges import Switcher, current_identity, PrivilegeError\n"
        "before = current_identity()\n"
        "out = {}\n"
        "try:\n" + "".join(f"    {line}\n" for line in body.splitlines()) + "    out['error'] = None\n"
        "except PrivilegeError as e:\n"
        "    out['error'] = f'{type(e).__name__}: {e}'\n"
        "out['restored'] = current_identity() == before\n"
        "out['uids'] = os.getresuid()\n"
        "print(json.dumps(out))\n"
    )
    proc = run_python(code, env={"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": profile})
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


VALUES = {"all": ALL, "re": RE_ONLY, "e": E_ONLY}


@requires_root
@pytest.mark.parametrize(
    ("profile", "values", "expected_error"),
    [
        ("eperm", "all", "VerificationError: setgroups([5]) failed: EPERM (Operation not permitted)"),
        (
            "seteuid-moves-saved",
            "e",
            "VerificationError: after seteuid(1001): saved uid is 1001, should be 0",
        ),
        (
            "setegid-moves-saved",
            "e",
            "VerificationError: after setegid(1002): saved gid is 1002, should be 0",
        ),
        ("setgroups-ignored", "all", "VerificationError: after setgroups([5]): groups are (), should be (5,)"),
        ("fsuid-stays-root", "all", "VerificationError: after setresuid(-1, 1001, -1): fsuid is 0, should be 1001"),
        (
            "setgroups-drops-last",
            "all",
            "VerificationError: after setgroups([5, 20000, 20001, ..., 3001 groups]): 3000 groups, should be 3001; "
            "missing [22999], unexpected []",
        ),
    ],
)
def test_a_temporary_switch_that_does_not_verify_raises_and_is_undone(
    faults_so: Path, profile: str, values: str, expected_error: str
) -> None:
    groups = [5, *range(20000, 23000)] if profile == "setgroups-drops-last" else [5]  # long: the sorted comparison
    out = switch_in_subprocess(faults_so, profile, f"Switcher({VALUES[values]!r}).become(1001, 1002, {groups!r})")
    assert out["error"] is not None and out["error"].startswith(expected_error)
    assert "restoring failed" not in out["error"]
    assert out["restored"], "the original identity was not restored after the failure"


@requires_root
def test_a_permanent_drop_sets_every_id_and_root_cannot_come_back(faults_so: Path) -> None:
    out = switch_in_subprocess(
        faults_so,
        "",
        f"Switcher({ALL!r}).drop_permanently(1001, 1002, [7])\n"
        "try:\n    os.setuid(0)\n    out['setuid0'] = 'succeeded'\nexcept OSError as e:\n"
        "    out['setuid0'] = e.strerror",
    )
    assert out["error"] is None and out["uids"] == [1001, 1001, 1001]
    assert out["setuid0"] == "Operation not permitted"


@requires_root
@pytest.mark.parametrize("values", ["all", "re", "e"])
def test_permanent_drop_works_with_each_mechanism(faults_so: Path, values: str) -> None:
    out = switch_in_subprocess(faults_so, "", f"Switcher({VALUES[values]!r}).drop_permanently(1001, 1002)")
    assert out["error"] is None and out["uids"] == [1001, 1001, 1001]


@requires_root
def test_a_permanent_drop_that_leaves_saved_root_is_caught(faults_so: Path) -> None:
    out = switch_in_subprocess(faults_so, "setuid-keeps-saved", f"Switcher({E_ONLY!r}).drop_permanently(1001, 1002)")
    assert out["error"].startswith("VerificationError: after setuid(1001): saved uid is 0, should be 1001")
    assert out["error"].endswith("the starting identity was restored")
    assert out["restored"], "a drop that did not verify must be undone while saved uid 0 still allows it"


@requires_root
def test_a_regain_call_that_reports_success_after_a_drop_is_caught(faults_so: Path) -> None:
    out = switch_in_subprocess(faults_so, "lying-success", f"Switcher({ALL!r}).drop_permanently(1001, 1002)")
    assert out["error"].startswith("VerificationError: after the permanent drop, setuid(0) succeeded")
