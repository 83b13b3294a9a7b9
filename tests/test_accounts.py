"""Switching to a user by name, with that user's groups, as daemon authors expect.

Real accounts: each test makes a user and its groups with useradd/groupadd
under fresh names, and removes them afterwards.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import Account, requires_thread_ops, requires_useradd, run_python, temporary_account
from procinfo import identity
from uidprobe.engine import MAX_SWITCH_GROUPS
from uidprobe.privileges import InvalidTargetError, PrivilegeError, Switcher, current_identity

RES = {"HASSETRESUID": 1, "HASSETRESGID": 1, "THREAD_CREDENTIALS": 1}
SCOPES = ["process", pytest.param("thread", marks=requires_thread_ops)]

pytestmark = requires_useradd


@pytest.fixture(scope="module")
def bill() -> Iterator[Account]:
    with temporary_account(extra_groups=2) as account:
        yield account


def switcher(scope: str) -> Switcher:
    return Switcher(RES, scope=scope)  # type: ignore[arg-type]


# ------------------------------------------------------------ by name


@pytest.mark.parametrize("scope", SCOPES)
def test_a_user_named_by_name_brings_its_uid_primary_gid_and_groups(bill: Account, scope: str) -> None:
    expected_groups = tuple(sorted(set(os.getgrouplist(bill.name, bill.gid))))
    assert set(bill.groups) | {bill.gid} == set(expected_groups)  # what useradd made, as the database says
    before = current_identity()
    with switcher(scope).as_user(bill.name) as inside:
        now = current_identity()  # the calling thread, read back from the kernel
    assert now == inside
    assert (inside.uids.effective, inside.fsuid) == (bill.uid, bill.uid)
    assert (inside.gids.effective, inside.fsgid) == (bill.gid, bill.gid)
    assert inside.groups == expected_groups
    assert current_identity() == before


@pytest.mark.parametrize("scope", SCOPES)
def test_become_and_restore_by_name(bill: Account, scope: str) -> None:
    sw = switcher(scope)
    before = current_identity()
    got = sw.become(bill.name)
    try:
        assert got.groups == tuple(sorted(set(os.getgrouplist(bill.name, bill.gid))))
    finally:
        sw.restore()
    assert current_identity() == before


def test_numbers_keep_their_meaning_exactly_no_groups_unless_listed(bill: Account) -> None:
    with Switcher(RES).as_user(bill.uid, bill.gid) as inside:
        assert (inside.uids.effective, inside.gids.effective, inside.groups) == (bill.uid, bill.gid, ())


def test_groups_can_be_none_or_an_explicit_list_of_names_and_numbers(bill: Account) -> None:
    sw = Switcher(RES)
    with sw.as_user(bill.name, groups=()) as inside:
        assert (inside.uids.effective, inside.gids.effective, inside.groups) == (bill.uid, bill.gid, ())
    with sw.as_user(bill.name, groups=[bill.group_names[0], 4242]) as inside:
        assert inside.groups == tuple(sorted({bill.groups[0], 4242}))
    # A numeric uid with a group by name.
    with sw.as_user(bill.uid, bill.group_names[1]) as inside:
        assert (inside.gids.effective, inside.groups) == (bill.groups[1], ())


def test_a_named_user_with_another_primary_group_gets_initgroups_of_that_group(bill: Account) -> None:
    with Switcher(RES).as_user(bill.name, bill.group_names[1]) as inside:
        assert inside.gids.effective == bill.groups[1]
        assert inside.groups == tuple(sorted(set(os.getgrouplist(bill.name, bill.groups[1]))))


@pytest.fixture
def group_only_file(bill: Account) -> Iterator[Path]:
    """A file only owner root and bill's second supplementary group may write."""
    d = Path(tempfile.mkdtemp(prefix="uidprobe-groups-", dir="/tmp"))
    try:
        d.chmod(0o755)
        f = d / "log"
        f.write_text("")
        os.chown(f, 0, bill.groups[1])
        f.chmod(0o660)
        yield f
    finally:
        shutil.rmtree(d)


@pytest.mark.parametrize("scope", SCOPES)
def test_a_file_writable_through_a_supplementary_group_is_writable_as_the_named_user(
    bill: Account, group_only_file: Path, scope: str
) -> None:
    sw = switcher(scope)
    # Leaving uid 0 clears the effective capabilities (CAP_DAC_OVERRIDE with
    # them), so the kernel checks the groups: without them, refused.
    with sw.as_user(bill.name, groups=()), pytest.raises(PermissionError):
        open(group_only_file, "a").close()
    with sw.as_user(bill.name), open(group_only_file, "a") as f:
        f.write("delivered\n")
    assert group_only_file.read_text() == "delivered\n"


# ------------------------------------------------------------ when names are resolved


@pytest.mark.parametrize("scope", SCOPES)
def test_every_lookup_runs_as_root_before_the_switch(
    bill: Account, scope: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, int]] = []  # (lookup, effective uid when it ran)

    def spy(name: str, real):  # type: ignore[no-untyped-def]
        def lookup(*args):  # type: ignore[no-untyped-def]
            seen.append((name, os.geteuid()))
            return real(*args)

        return lookup

    monkeypatch.setattr(pwd, "getpwnam", spy("getpwnam", pwd.getpwnam))
    monkeypatch.setattr(grp, "getgrnam", spy("getgrnam", grp.getgrnam))
    monkeypatch.setattr(os, "getgrouplist", spy("getgrouplist", os.getgrouplist))
    sw = switcher(scope)
    with sw.as_user(bill.name, groups=[bill.group_names[0]]):
        pass
    with sw.as_user(bill.name):
        assert [name for name, _ in seen] == ["getpwnam", "getgrnam", "getpwnam", "getgrouplist"]
    assert all(euid == 0 for _, euid in seen)


def test_names_are_not_resolved_while_switched(bill: Account) -> None:
    sw, other = Switcher(RES), Switcher(RES)
    with sw.as_user(bill.uid, bill.gid):
        with pytest.raises(PrivilegeError, match="already switched"):
            sw.as_user(bill.name)
        with pytest.raises(PrivilegeError, match="names are resolved with effective uid 0 only"):
            other.as_user(bill.name)  # another Switcher, the same switched process


def test_names_are_looked_up_again_on_every_call() -> None:
    with temporary_account(extra_groups=2) as carol:
        sw = Switcher(RES)
        with sw.as_user(carol.name) as inside:
            assert carol.groups[1] in inside.groups
        subprocess.run(["gpasswd", "--delete", carol.name, carol.group_names[1]], check=True, capture_output=True)
        with sw.as_user(carol.name) as inside:
            assert carol.groups[1] not in inside.groups and carol.groups[0] in inside.groups


# ------------------------------------------------------------ unknown names


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        (("uidprobe-no-such-user",), {}, "no user named 'uidprobe-no-such-user'"),
        (("root", "uidprobe-no-such-group"), {}, "no group named 'uidprobe-no-such-group'"),
        (("root",), {"groups": ["adm", "uidprobe-no-such-group"]}, "no group named 'uidprobe-no-such-group'"),
        (("a\0b",), {}, "no user named 'a\\\\x00b'"),
    ],
)
@pytest.mark.parametrize("scope", SCOPES)
def test_an_unknown_name_is_refused_naming_it_and_nothing_changes(
    args: tuple[str, ...], kwargs: dict[str, object], named: str, scope: str
) -> None:
    sw = switcher(scope)
    before = identity()
    with pytest.raises(InvalidTargetError, match=named):
        sw.as_user(*args, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidTargetError, match=named):
        sw.become(*args, **kwargs)  # type: ignore[arg-type]
    if scope == "process":
        with pytest.raises(InvalidTargetError, match=named):
            sw.drop_permanently(*args, **kwargs)  # type: ignore[arg-type]
    assert identity() == before and not sw.switched


def test_a_numeric_uid_without_a_gid_is_refused() -> None:
    with pytest.raises(InvalidTargetError, match="give its gid too, or name the user"):
        Switcher(RES).as_user(1001)


def test_a_string_is_not_a_list_of_groups() -> None:
    with pytest.raises(InvalidTargetError, match="not the string 'adm'"):
        Switcher(RES).as_user("root", groups="adm")


# ------------------------------------------------------------ permanent


DROP_TO_NOBODY = """
import json
from uidprobe.privileges import Switcher
Switcher({values!r}).drop_permanently("nobody")
with open("/proc/self/status") as f:
    status = dict(line.rstrip().split(":", 1) for line in f if ":" in line)
print(json.dumps({{k: status[k].split() for k in ("Uid", "Gid", "Groups", "CapPrm", "CapEff", "CapAmb")}}))
"""


def test_drop_permanently_to_nobody_by_name_leaves_65534_everywhere() -> None:
    pw = pwd.getpwnam("nobody")
    if (pw.pw_uid, pw.pw_gid, os.getgrouplist("nobody", pw.pw_gid)) != (65534, 65534, [65534]):
        pytest.skip(f"nobody here is not 65534/65534 in group 65534 only: {pw}")
    proc = run_python(DROP_TO_NOBODY.format(values=RES))
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    # Real, effective, saved and filesystem ids; the one group; no capability.
    assert status["Uid"] == status["Gid"] == ["65534"] * 4
    assert status["Groups"] == ["65534"]
    assert [int(status[k][0], 16) for k in ("CapPrm", "CapEff", "CapAmb")] == [0, 0, 0]


# ------------------------------------------------------------ many groups


def test_a_user_in_300_groups_switches_or_is_refused_naming_both_limits() -> None:
    with temporary_account(extra_groups=300) as many:
        expected = tuple(sorted(set(os.getgrouplist(many.name, many.gid))))
        assert len(expected) == 301
        kernel = os.sysconf("SC_NGROUPS_MAX")
        sw = Switcher(RES)
        before = current_identity()
        if len(expected) <= min(kernel, MAX_SWITCH_GROUPS):
            with sw.as_user(many.name) as inside:
                assert inside.groups == expected
                assert sorted(os.getgroups()) == list(expected)  # the C library's view agrees
        else:
            message = (
                f"user '{many.name}': 301 supplementary groups exceed the limit: uidprobe's switch sets and "
                f"verifies at most {MAX_SWITCH_GROUPS}, and the kernel allows {kernel} (NGROUPS_MAX)"
            )
            with pytest.raises(InvalidTargetError) as e:
                sw.as_user(many.name)
            assert str(e.value) == message
        assert current_identity() == before
