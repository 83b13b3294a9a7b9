"""Robustness: hostile or unusual callers, long runs, races.

Each runs the whole probe suite (not just the engine), through both ways of
forking: from the spawned runner and from the caller itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import requires_other_user, requires_root, requires_tools, run_python
from procinfo import open_fds, zombies_of_this_process
from uidprobe import _engine, suite
from uidprobe.engine import Engine, default_engine
from uidprobe.names import OBSERVED

pytestmark = requires_root
TRANSPORTS = ["spawn", "fork"]


@pytest.fixture(params=TRANSPORTS)
def eng(request: pytest.FixtureRequest) -> Engine:
    """The engine through one transport: the runner, or forking the caller."""
    if request.param == "fork":
        return Engine(_engine, runner=None)
    return default_engine()


def all_true(eng: Engine) -> bool:
    return all(r.verdict is True for r in suite.run(engine=eng).values())


def test_probes_are_right_while_8_python_threads_are_busy(eng: Engine) -> None:
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    threads = [threading.Thread(target=spin) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        results = [all_true(eng) for _ in range(10)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert all(results)


@pytest.mark.parametrize("disposition", ["ignored", "handler that reaps everything"])
def test_probes_are_right_whatever_the_callers_sigchld_disposition(eng: Engine, disposition: str) -> None:
    def reap_all(signum: int, frame: object) -> None:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass

    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN if disposition == "ignored" else reap_all)
    try:
        assert all(all_true(eng) for _ in range(10))
    finally:
        signal.signal(signal.SIGCHLD, old)
    assert zombies_of_this_process() == []


def _memory_kib() -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]), int(fields["VmSize"].split()[0])


def test_1000_probe_runs_leak_no_fd_no_zombie_and_no_memory(eng: Engine) -> None:
    for _ in range(50):  # warm: caches, allocator pools, first-use imports
        suite.run(engine=eng)
    fds = open_fds()
    # Two windows of 500 runs: a leak grows the process in both, while a
    # one-time step of the allocator (a new 1 MiB arena, glibc raising its
    # mmap threshold) shows in one at most.
    growth = []
    for _ in range(2):
        rss, vms = _memory_kib()
        for _ in range(500):
            suite.run(engine=eng)
        rss2, vms2 = _memory_kib()
        growth.append((rss2 - rss, vms2 - vms))
    assert open_fds() == fds
    assert zombies_of_this_process() == []
    assert min(v for _, v in growth) < 512, f"address space grew by {growth} KiB (rss, vms) per 500 runs"
    assert min(r for r, _ in growth) < 1024, f"resident memory grew by {growth} KiB (rss, vms) per 500 runs"


@pytest.mark.parametrize(("profile", "phrase"), [("crash", "SIGSEGV"), ("hang", "timed out")])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_crashing_or_hanging_children_leave_the_caller_intact_and_no_zombie(
    faults_so: Path, profile: str, phrase: str, transport: str
) -> None:
    code = (
        "import json, os\nfrom procinfo import identity, zombies_of_this_process\n"
        "from uidprobe import _engine, suite\n"
        "from uidprobe.engine import Engine, default_engine\n"
        f"eng = Engine(_engine, runner=None) if {transport!r} == 'fork' else default_engine()\n"
        "before = identity()\n"
        "res = suite.run(timeout=0.2, engine=eng)\n"
        "print(json.dumps({'same': identity() == before, 'zombies': zombies_of_this_process(),\n"
        "                  'reasons': [r.reason for n, r in res.items() if r.verdict is not None and n != "
        "'POSIX_SAVED_IDS']}))\n"
        "print(res['USESETEUID'].reason)\n"
    )
    env = {"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": profile, "PYTHONPATH": str(Path(__file__).parent)}
    proc = run_python(code, env=env)
    first, reason = proc.stdout.splitlines()
    data = json.loads(first)
    assert data == {"same": True, "zombies": [], "reasons": []}
    assert phrase in reason


# --------------------------------------------------------- unusual callers


@requires_tools
@requires_other_user
def test_a_non_root_caller_with_cap_setuid_alone_tests_uids_but_not_gids() -> None:
    caps = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "--inh-caps=+setuid", "--ambient-caps=+setuid"]
    proc = run_python(
        "import json, uidprobe; print(json.dumps({n: [r.verdict, r.reason] for n, r in uidprobe.probe().items()}))",
        prefix=caps,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    for name in ("USESETEUID", "HASSETREUID", "SETUID_PERMANENT", "HASSETRESUID"):
        assert results[name][0] is True, results[name]
    for name in ("USESETEGID", "HASSETREGID", "SETGID_PERMANENT", "HASSETRESGID", "SETGROUPS_CAN_CLEAR"):
        verdict, reason = results[name]
        assert verdict is None and "not root (euid 1000) and lacks CAP_SETGID" in reason


@requires_tools
@requires_other_user
def test_a_non_root_caller_with_both_capabilities_tests_everything() -> None:
    caps = [
        "setpriv",
        "--reuid=1000",
        "--regid=1000",
        "--clear-groups",
        "--inh-caps=+setuid,+setgid",
        "--ambient-caps=+setuid,+setgid",
    ]
    proc = run_python(
        "import json, uidprobe; print(json.dumps({n: r.verdict for n, r in uidprobe.probe().items()}))",
        prefix=caps,
    )
    assert proc.returncode == 0, proc.stderr
    assert all(v is True for v in json.loads(proc.stdout).values())


# ------------------------------------------------------ configure vs imports


@pytest.fixture
def shared_store() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="uidprobe-race-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d / "verdicts"
    finally:
        shutil.rmtree(d)


IMPORTER = """
import json, subprocess, sys
bad = []
for _ in range(int(sys.argv[1])):
    out = subprocess.run([sys.executable, "-c",
        "import json, uidprobe.config as c; print(json.dumps([c.SOURCE, c.REASON, c.VARS]))"],
        capture_output=True, text=True)
    if out.returncode != 0:
        bad.append(out.stderr[-200:]); continue
    source, reason, values = json.loads(out.stdout)
    if source != "store" or any(values[n] != 1 for n in %r):
        bad.append([source, reason])
print(json.dumps(bad[:3] + [len(bad)]))
""".replace("%r", repr(OBSERVED))


def test_configure_racing_with_imports_in_other_processes(shared_store: Path) -> None:
    env = {**os.environ, "UIDPROBE_STORE": str(shared_store)}
    cmd = [sys.executable, "-m", "uidprobe", "configure"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)  # a store exists before readers start
    configurers = [
        subprocess.Popen(
            ["sh", "-c", 'for i in 1 2 3 4 5 6 7 8; do "$@" >/dev/null || exit 1; done', "sh", *cmd], env=env
        )
        for _ in range(3)
    ]
    importers = [
        subprocess.Popen([sys.executable, "-c", IMPORTER, "15"], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for c in configurers:
        assert c.wait(timeout=300) == 0
    for p in importers:
        out, _ = p.communicate(timeout=300)
        report = json.loads(out)
        assert report[-1] == 0, report
    assert sorted(os.listdir(shared_store.parent)) == ["verdicts"]  # no temporary file left behind
