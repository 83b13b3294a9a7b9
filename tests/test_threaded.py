"""Per-thread switching end to end: archives owned by different users written
at the same time by several threads, each as its owner, by a root process
without CAP_DAC_OVERRIDE and CAP_FOWNER (so a write succeeds only as the
owner); and a load test of thousands of thread-scoped switches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ROOT, archives_owned_by, requires_root, requires_thread_ops, requires_tools, run_python
from uidprobe.errors import NoMechanismError, PrivilegeError
from uidprobe.privileges import Switcher

EXAMPLE = ROOT / "examples" / "threaded_delivery.py"
NO_DAC = ["setpriv", "--inh-caps=-dac_override,-fowner", "--bounding-set=-dac_override,-fowner"]
OWNERS = {"bill": 2001, "alice": 2002, "carol": 2003, "dave": 2004, "erin": 2005, "frank": 2006}
ROUNDS = 40
RES = {"HASSETRESUID": 1, "HASSETRESGID": 1}

pytestmark = [requires_root]


@pytest.fixture
def archives() -> Iterator[list[Path]]:
    with archives_owned_by(OWNERS, "uidprobe-threaded-") as paths:
        yield paths


def deliver(paths: list[Path], message: bytes, *extra: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "UIDPROBE_STORE": "/nonexistent/verdicts"}  # probe live
    return subprocess.run(
        [*NO_DAC, sys.executable, str(EXAMPLE), *extra, *map(str, paths)],
        input=message,
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )


@requires_tools
@requires_thread_ops
def test_threads_deliver_to_every_archive_at_once_each_as_its_owner(archives: list[Path]) -> None:
    proc = deliver(archives, b"list message\n", "--rounds", str(ROUNDS))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""  # no thread saw an identity that was not its own
    for path, (name, uid) in zip(archives, OWNERS.items()):
        assert path.read_bytes() == b"list message\n" * ROUNDS, name
        st = path.stat()
        assert (st.st_uid, st.st_mode & 0o7777) == (uid, 0o4600)
    assert proc.stdout.decode().splitlines() == [
        f"delivered {ROUNDS} times to {p} as uid {uid} via SYS_setresuid/SYS_setresgid"
        for p, uid in zip(archives, OWNERS.values())
    ]


@requires_tools
def test_root_without_dac_override_cannot_write_them_itself(archives: list[Path]) -> None:
    proc = subprocess.run([*NO_DAC, "sh", "-c", f'echo x >> "{archives[0]}"'], capture_output=True, check=False)
    assert proc.returncode != 0 and b"Permission denied" in proc.stderr


LOAD = """
import json, os, threading
from uidprobe.privileges import Switcher
sw = Switcher({values!r}, scope="thread")
THREADS, ROUNDS = {threads}, {rounds}
stop = threading.Event()
seen_by_main = set()
problems = []
counts = [0] * THREADS
start = threading.Barrier(THREADS + 1)

def worker(k):
    uid, gid, groups = 3000 + k, 4000 + k, [5000 + k, 6000]
    start.wait()
    for _ in range(ROUNDS):
        with sw.as_user(uid, gid, groups) as inside:
            got = (os.getresuid(), os.getresgid(), sorted(os.getgroups()))
            want = ((0, uid, 0), (0, gid, 0), sorted(groups))
            if got != want or inside.uids != (0, uid, 0) or inside.groups != tuple(sorted(groups)):
                problems.append(("inside", k, got, want))
        back = (os.getresuid(), os.getresgid(), os.getgroups())
        if back[0] != (0, 0, 0) or back[1] != (0, 0, 0) or back[2] != before_groups:
            problems.append(("after", k, back))
        counts[k] += 1

before_groups = os.getgroups()
threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
for t in threads:
    t.start()
start.wait()
while any(t.is_alive() for t in threads):  # the main thread never switches: it must stay root
    seen_by_main.add((os.getresuid(), os.getresgid(), tuple(os.getgroups())))
for t in threads:
    t.join()
print(json.dumps({{"counts": counts, "problems": problems[:5], "main": sorted(seen_by_main),
                  "before": [list(os.getresuid()), list(os.getresgid()), before_groups]}}))
"""


@requires_thread_ops
def test_thousands_of_switches_across_8_threads_each_read_back_and_never_seen_elsewhere() -> None:
    values = {**RES, "THREAD_CREDENTIALS": 1}
    proc = run_python(LOAD.format(values=values, threads=8, rounds=500), timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["counts"] == [500] * 8  # 4000 verified switches and as many restores
    assert out["problems"] == []
    before = out["before"]
    assert out["main"] == [[before[0], before[1], before[2]]]


def test_thread_scope_needs_the_thread_credentials_verdict() -> None:
    with pytest.raises(NoMechanismError, match="THREAD_CREDENTIALS=1, and it is 0 here"):
        Switcher({**RES, "THREAD_CREDENTIALS": 0}, scope="thread")
    with pytest.raises(ValueError, match="scope must be"):
        Switcher(RES, scope="threads")  # type: ignore[arg-type]


@requires_thread_ops
def test_a_thread_scoped_switch_leaves_the_calling_process_and_other_threads_alone() -> None:
    import threading

    sw = Switcher({**RES, "THREAD_CREDENTIALS": 1}, scope="thread")
    seen: list[tuple[int, int, int]] = []

    def work() -> None:
        with sw.as_user(1000, 1000, [1000]):
            seen.append(os.getresuid())
            seen.append(main_ids)

    main_ids = os.getresuid()
    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [(0, 1000, 0), (0, 0, 0)]
    assert os.getresuid() == (0, 0, 0) and not sw.switched


@requires_thread_ops
def test_a_permanent_drop_refuses_thread_scope() -> None:
    sw = Switcher({**RES, "THREAD_CREDENTIALS": 1}, scope="thread")
    with pytest.raises(PrivilegeError, match="process-wide"):
        sw.drop_permanently(65534, 65534)


@requires_thread_ops
def test_each_thread_has_its_own_switch_state_and_a_new_thread_inherits_its_creators_identity() -> None:
    import threading

    sw = Switcher({**RES, "THREAD_CREDENTIALS": 1}, scope="thread")
    go, done = threading.Event(), threading.Event()
    other: list[object] = []

    def look() -> None:  # started before the switch: keeps root
        go.wait()
        other.append(sw.switched)
        other.append(os.getresuid())
        done.set()

    older = threading.Thread(target=look, daemon=True)
    older.start()
    try:
        sw.become(1000, 1000)  # inside the try: if it raises, `older` is still released
        go.set()
        done.wait()
        # A thread started while switched starts with the switched identity
        # (the kernel copies the creating thread's credentials): documented.
        newer: list[object] = []
        t = threading.Thread(target=lambda: newer.append(os.getresuid()))
        t.start()
        t.join()
        assert other == [False, (0, 0, 0)]
        assert newer == [(0, 1000, 0)]
        assert sw.switched and os.getresuid() == (0, 1000, 0)
    finally:
        if sw.switched:
            sw.restore()
        go.set()
        older.join()
    assert os.getresuid() == (0, 0, 0)
