"""Choosing ids and judging privilege, before any fork."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import requires_root, requires_tools
from uidprobe.ids import PREFERRED_IDS, Family, IdSet, validate_ids
from uidprobe.process import IdMap, IdsInUse, ProcessState, choose_ids, read_state

FULL = IdMap("/proc/self/uid_map", ((0, 0, 4294967295),))


def state(euid: int, setuid: bool, setgid: bool) -> ProcessState:
    return ProcessState(euid, setuid, setgid, True, FULL, FULL, True)


def test_full_map_gives_the_preferred_ids() -> None:
    assert choose_ids(FULL, "uid") == IdSet(65520, 65521, 65522)


def in_use(uids: set[int], named: set[int] = set()) -> IdsInUse:  # noqa: B006 - never changed
    return IdsInUse(uids=frozenset(uids), named=lambda family, i: i in named)


def test_ids_held_or_named_are_skipped_in_a_fixed_order() -> None:
    assert choose_ids(FULL, "uid", in_use=in_use({65520}, {65522})) == IdSet(65521, 65523, 65524)
    # every preferred id taken: the mapped ids from 1 up
    assert choose_ids(FULL, "uid", in_use=in_use(set(PREFERRED_IDS), {1, 2, 3})) == IdSet(4, 5, 6)


def test_named_ids_fill_in_only_where_too_few_are_free() -> None:
    m = IdMap("/proc/self/uid_map", ((0, 0, 1), (1000, 1000, 4)))
    assert choose_ids(m, "uid", in_use=in_use(set(), {1000, 1002})) == IdSet(1000, 1001, 1003)
    assert choose_ids(m, "uid", in_use=in_use({1001}, {1000, 1002})) == IdSet(1000, 1002, 1003)


def test_held_ids_are_never_chosen_however_few_are_left() -> None:
    m = IdMap("/proc/self/gid_map", ((0, 0, 10),))
    assert choose_ids(m, "gid", in_use=IdsInUse(gids=frozenset(range(3, 10)))) == (
        "only 2 of the 9 gids tried in /proc/self/gid_map (0 0 10) are held by no running process; "
        "the probes need three to switch between"
    )


def test_overflow_ids_are_held() -> None:
    ids = IdsInUse.read()
    assert int(Path("/proc/sys/kernel/overflowuid").read_text()) in ids.uids
    assert int(Path("/proc/sys/kernel/overflowgid").read_text()) in ids.gids


def test_requested_unmapped_id_is_a_reason() -> None:
    m = IdMap("/proc/self/uid_map", ((0, 0, 10),))
    assert choose_ids(m, "uid", (1, 2, 50)) == "uid 50 is not mapped in /proc/self/uid_map (0 0 10)"


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ((0, 1, 2), "0 is not a usable id"),
        ((1, 1, 2), "must differ"),
        ((1, 2, 4294967295), "not a usable id"),
        ((1, 2), "exactly three"),
    ],
)
def test_bad_requested_ids_are_refused(ids: tuple[int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_ids(ids, "uid")


def test_root_with_caps_can_switch() -> None:
    assert state(0, True, True).cannot_switch(Family.GID) is None


def test_non_root_without_caps_is_told_so() -> None:
    why = state(1000, False, False).cannot_switch(Family.UID)
    assert why == "this process cannot test: it is not root (euid 1000) and lacks CAP_SETUID; run it as root"


def test_root_without_cap_setuid_is_distinguished_from_non_root() -> None:
    why = state(0, False, True).cannot_switch(Family.UID)
    assert why is not None and "runs as root but without CAP_SETUID" in why


def test_uid_probes_do_not_need_cap_setgid() -> None:
    s = state(0, True, False)
    assert s.cannot_switch(Family.UID) is None
    assert "CAP_SETGID" in (s.cannot_switch(Family.GID) or "")


def test_non_root_with_both_caps_can_switch() -> None:
    assert state(1000, True, True).cannot_switch(Family.GID) is None


def _fake_proc(root: Path, uid_map: str, gid_map: str, setgroups: str = "allow") -> str:
    (root / "ns").mkdir(exist_ok=True)
    (root / "ns" / "user").write_text("")  # its identity (device, inode) keys the cache
    (root / "uid_map").write_text(uid_map)
    (root / "gid_map").write_text(gid_map)
    (root / "setgroups").write_text(setgroups + "\n")
    return str(root)


def test_a_namespace_whose_maps_are_not_yet_written_is_read_again(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, "", "")
    assert read_state(proc).uid_map == IdMap(f"{proc}/uid_map", ())
    _fake_proc(tmp_path, "0 100000 65536\n", "0 100000 65536\n", "deny")
    state = read_state(proc)
    assert state.uid_map is not None and state.uid_map.ranges == ((0, 100000, 65536),)
    assert state.setgroups_allowed is False


def test_a_namespaces_written_maps_are_read_once(tmp_path: Path) -> None:
    # Written maps are final (the kernel refuses a second write), and so is
    # setgroups once gid_map is written: later runs need not read them again.
    proc = _fake_proc(tmp_path, "0 0 4294967295\n", "0 0 4294967295\n")
    first = read_state(proc)
    _fake_proc(tmp_path, "0 1 1\n", "0 1 1\n", "deny")
    again = read_state(proc)
    assert (again.uid_map, again.gid_map, again.setgroups_allowed) == (first.uid_map, first.gid_map, True)


HOLD = """
import os, sys, time
os.setresgid(65521, 65522, 65523)
os.setresuid(65521, 65522, 65523)
print("holding", flush=True)
time.sleep(60)
"""


@requires_root
def test_ids_a_running_process_holds_are_not_chosen() -> None:
    # real, effective and saved ids alike: a saved id can become effective
    with subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
            in_use = IdsInUse.read()
        finally:
            holder.kill()
    assert {65521, 65522, 65523} <= in_use.uids and {65521, 65522, 65523} <= in_use.gids
    assert choose_ids(FULL, "uid", in_use=in_use)[1:] == choose_ids(FULL, "gid", in_use=in_use)[1:] == (65524, 65525)


CHOOSE = """
from uidprobe.process import IdsInUse, choose_ids, read_state
state, in_use = read_state(), IdsInUse.read()
print(choose_ids(state.uid_map, "uid", in_use=in_use), choose_ids(state.gid_map, "gid", in_use=in_use))
"""


@requires_root
@requires_tools
def test_ids_a_passwd_or_group_entry_names_are_not_chosen(tmp_path: Path) -> None:
    # The entries are added in a private mount namespace only: nothing else sees them.
    passwd, group = tmp_path / "passwd", tmp_path / "group"
    passwd.write_text(Path("/etc/passwd").read_text() + "probe-a:x:65520:65520::/:/usr/sbin/nologin\n")
    group.write_text(Path("/etc/group").read_text() + "probe-b:x:65521:\n")
    script = 'mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && exec "$3" -c "$4"'
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", str(passwd), str(group), sys.executable, CHOOSE],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    uids, gids = proc.stdout.strip().split(") ")
    assert "65520" not in uids and "65521" in uids
    assert "65521" not in gids and "65520" in gids
