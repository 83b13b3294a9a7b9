"""End to end: the mailing-list archive scenario that motivates uidprobe.

Two archives owned by two users, mode 4600.  The delivery program runs as
root *without* CAP_DAC_OVERRIDE and CAP_FOWNER (the NFS situation: root alone
cannot write them), so each append succeeds only if it really became the
file's owner.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ROOT, archives_owned_by, requires_root, requires_tools, requires_useradd, temporary_account

EXAMPLE = ROOT / "examples" / "archive_delivery.py"
NO_DAC = ["setpriv", "--inh-caps=-dac_override,-fowner", "--bounding-set=-dac_override,-fowner"]
OWNERS = {"bill": 2001, "alice": 2002}

pytestmark = [requires_root, requires_tools]


@pytest.fixture
def archives() -> Iterator[list[Path]]:
    with archives_owned_by(OWNERS, "uidprobe-archive-", lambda name: f"earlier message for {name}\n".encode()) as paths:
        yield paths


def deliver(
    paths: list[Path], message: bytes, profile: str | None = None, faults: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "UIDPROBE_STORE": "/nonexistent/verdicts"}  # probe live, under the profile
    if profile:
        assert faults is not None
        env.update(LD_PRELOAD=str(faults), UIDPROBE_FAULT=profile)
    return subprocess.run(
        [*NO_DAC, sys.executable, str(EXAMPLE), *map(str, paths)],
        input=message,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )


def snapshot(paths: list[Path]) -> list[tuple[bytes, int, int]]:
    return [(p.read_bytes(), p.stat().st_mode, p.stat().st_uid) for p in paths]


def test_root_without_dac_override_cannot_write_the_archives_itself(archives: list[Path]) -> None:
    proc = subprocess.run([*NO_DAC, "sh", "-c", f'echo x >> "{archives[0]}"'], capture_output=True, check=False)
    assert proc.returncode != 0 and b"Permission denied" in proc.stderr


def test_delivery_appends_to_each_archive_as_its_owner(archives: list[Path]) -> None:
    proc = deliver(archives, b"Subject: hello\n\nlist message\n")
    assert proc.returncode == 0, proc.stderr
    for path, name in zip(archives, OWNERS):
        assert path.read_bytes() == f"earlier message for {name}\n".encode() + b"Subject: hello\n\nlist message\n"
        assert path.stat().st_mode & 0o7777 == 0o4600  # still marked for the next delivery
    assert proc.stdout.decode().splitlines() == [
        f"delivered to {archives[0]} as uid 2001 via setresuid/setresgid",
        f"delivered to {archives[1]} as uid 2002 via setresuid/setresgid",
    ]


def test_a_second_delivery_still_finds_set_user_id_archives(archives: list[Path]) -> None:
    assert deliver(archives, b"one\n").returncode == 0
    assert deliver(archives, b"two\n").returncode == 0
    assert archives[1].read_bytes().endswith(b"one\ntwo\n")


def test_with_a_broken_seteuid_delivery_still_uses_setresuid(archives: list[Path], faults_so: Path) -> None:
    proc = deliver(archives, b"m\n", "seteuid-moves-saved", faults_so)
    assert proc.returncode == 0, proc.stderr
    assert b"via setresuid/setresgid" in proc.stdout


def test_on_an_old_platform_with_broken_seteuid_and_no_setresuid_it_succeeds_through_setreuid(
    archives: list[Path], faults_so: Path
) -> None:
    proc = deliver(archives, b"m\n", "seteuid-moves-saved,no-setresuid", faults_so)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(b"via setreuid/setregid") == 2
    assert all(p.read_bytes().endswith(b"m\n") for p in archives)


def test_with_every_mechanism_broken_it_refuses_and_both_files_are_unchanged(
    archives: list[Path], faults_so: Path
) -> None:
    before = snapshot(archives)
    proc = deliver(archives, b"m\n", "seteuid-moves-saved,setreuid-ignores-real,no-setresuid", faults_so)
    assert proc.returncode == 1
    assert b"refused, nothing written: no uid mechanism can switch and come back here" in proc.stderr
    assert snapshot(archives) == before


def test_an_archive_without_the_set_user_id_bit_is_refused_before_any_write(archives: list[Path]) -> None:
    archives[1].chmod(0o600)
    before = snapshot(archives)
    proc = deliver(archives, b"m\n")
    assert proc.returncode == 1 and b"no set-user-ID bit" in proc.stderr
    assert snapshot(archives) == before


@requires_useradd
def test_an_owner_with_an_account_is_delivered_to_with_its_groups() -> None:
    # The archive sits in a list directory only the list's group may enter
    # (0750 root:list), and its owner is in that group: delivering as the
    # owner's uid and gid alone would be refused at the directory.
    with temporary_account(extra_groups=1) as owner:
        base = Path(tempfile.mkdtemp(prefix="uidprobe-list-", dir="/tmp"))
        try:
            base.chmod(0o755)
            lists = base / "list"
            lists.mkdir()
            os.chown(lists, 0, owner.groups[0])
            lists.chmod(0o750)
            archive = lists / "archive"
            archive.write_bytes(b"")
            os.chown(archive, owner.uid, owner.gid)
            archive.chmod(0o4600)
            proc = deliver([archive], b"to the list\n")
            assert proc.returncode == 0, proc.stderr
            assert archive.read_bytes() == b"to the list\n"
            groups = ",".join(map(str, sorted({owner.gid, *owner.groups})))
            assert proc.stdout.decode().splitlines() == [
                f"delivered to {archive} as {owner.name} (uid {owner.uid}, groups {groups}) via setresuid/setresgid"
            ]
        finally:
            shutil.rmtree(base)
