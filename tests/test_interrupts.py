"""Interrupts and bounds (#14 items 1 and 2, #18 items 1 and 2): SIGINT,
SIGTERM and SIGHUP to the command's whole process group (what a terminal's
Ctrl-C, a closing terminal and ``timeout`` send) end it at once with 130,
143 or 129, one line that names how many processes were ended, and no
process of that run left; SIGKILL to the supervisor takes every process
with it before any output is written; the same with one CPU online.  A
model whose transitions could not run exits 2; the import-time live probe
is bounded; long work shows a self-erasing progress line on a terminal
only.

The processes of a run are found by a marker in their environment and by
their session, never by parent pid (an orphan's parent is whoever reaps it).
"""

from __future__ import annotations

import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import requires_root, run_cli, run_python
from uidprobe import cli, supervise

HANG = {"UIDPROBE_FAULT": "hang"}
MARKER = "UIDPROBE_TEST_MARKER"


def _stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name, or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


class Run:
    """``uidprobe ARGV`` in a session of its own, every process of it
    carrying a marker in its environment, with hanging probe children."""

    def __init__(self, faults_so: Path, store: Path, argv: list[str], prefix: list[str] | None = None) -> None:
        self.marker = uuid.uuid4().hex
        env = {**os.environ, **HANG, "LD_PRELOAD": str(faults_so), "UIDPROBE_STORE": str(store), MARKER: self.marker}
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "uidprobe", *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def processes(self) -> list[int]:
        """Every live process of this run: its session, or its marker."""
        found = []
        tag = f"{MARKER}={self.marker}".encode()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            fields = _stat(pid)
            if fields is None or fields[0] in (b"Z", b"X"):
                continue
            try:
                marked = tag in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                marked = False
            if marked or int(fields[3]) == self.proc.pid:
                found.append(pid)
        return found

    def wait_for_hanging_children(self) -> None:
        """Until the supervisor, the worker, a runner and a probe child run."""
        deadline = time.monotonic() + 20
        while len(self.processes()) < 4:
            assert time.monotonic() < deadline, "no probe child was started"
            time.sleep(0.01)

    def left_after(self, seconds: float) -> list[int]:
        time.sleep(seconds)
        return self.processes()


WORDS = {
    signal.SIGINT: "interrupted by SIGINT",
    signal.SIGTERM: "terminated by SIGTERM",
    signal.SIGHUP: "hung up by SIGHUP",
}
COMMANDS = {
    "model": ["model", "--timeout", "0.5"],
    "check": ["check", "USESETEUID"],
    "configure": ["configure", "--timeout", "3"],
}


@pytest.fixture(params=["all-cpus", "one-cpu"])
def cpus(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """A prefix that runs the command with every CPU online, or with one
    (a private mount namespace where /sys/devices/system/cpu/online says
    "0": what sysconf and os.cpu_count() read)."""
    if request.param == "all-cpus":
        return []
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    online = tmp_path / "online"
    online.write_text("0\n")
    prefix = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /sys/devices/system/cpu/online && exec "$@"', str(online)]
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import os; print(os.cpu_count())"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0 or probe.stdout.strip() != "1":
        pytest.skip(f"cannot show one CPU in a private mount namespace: {probe.stderr.strip() or probe.stdout.strip()}")
    return prefix


@requires_root
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_signal_to_the_process_group_ends_everything_with_one_line(
    faults_so: Path, tmp_path: Path, cpus: list[str], command: str, sig: signal.Signals
) -> None:
    tmp_path.chmod(0o755)
    run = Run(faults_so, tmp_path / "v", COMMANDS[command], cpus)
    run.wait_for_hanging_children()
    os.killpg(run.proc.pid, sig)
    _, err = run.proc.communicate(timeout=15)
    assert run.proc.returncode == 128 + sig, err
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    m = re.fullmatch(rf"uidprobe: {WORDS[sig]}; ended (\d+) process(es)?; nothing left running", lines[0])
    assert m is not None, lines
    # at least the worker (a runner the signal killed took its children)
    assert int(m.group(1)) >= 1
    assert run.left_after(1.0) == []


@requires_root
def test_sigkill_to_the_supervisor_leaves_nothing_running_and_writes_no_output(
    faults_so: Path, tmp_path: Path, cpus: list[str]
) -> None:
    # Every child hangs for 0.05 s: the model is done within about two
    # seconds, so a worker that survived its supervisor would write the
    # file while the test still looks.
    tmp_path.chmod(0o755)
    out = tmp_path / "model.json"
    run = Run(faults_so, tmp_path / "v", ["model", "--timeout", "0.05", "--format", "json", "-o", str(out)], cpus)
    run.wait_for_hanging_children()
    run.proc.kill()
    run.proc.communicate(timeout=5)
    deadline = time.monotonic() + 2
    while run.processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.processes() == []
    assert run.left_after(3.0) == []
    assert not out.exists()


@requires_root
@pytest.mark.slow
def test_ctrl_c_in_a_loop_of_20_model_runs_leaves_no_process_and_no_traceback(faults_so: Path, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    for _ in range(20):
        run = Run(faults_so, tmp_path / "v", ["model", "--timeout", "0.05"])
        run.wait_for_hanging_children()
        os.killpg(run.proc.pid, signal.SIGINT)
        _, err = run.proc.communicate(timeout=15)
        assert run.proc.returncode == 130
        assert re.fullmatch(
            r"uidprobe: interrupted by SIGINT; ended \d+ processes; nothing left running\n", err.decode()
        )
        assert run.left_after(0.5) == []


def test_stop_and_kill_ends_a_tree_that_blocks_every_signal_but_the_unblockable() -> None:
    code = (
        "import os, signal, time\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})\n"
        "for _ in range(2):\n"
        "    if os.fork() == 0:\n"
        "        break\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while len(descendants(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = descendants(proc.pid)
        assert len(tree) == 2
        assert supervise.stop_and_kill(proc.pid) == tree
        time.sleep(0.2)
        assert [p for p in tree if alive(p)] == []
    finally:
        proc.kill()
        proc.wait()


def descendants(pid: int) -> set[int]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        fields = _stat(int(name)) if name.isdigit() else None
        if fields is not None:
            tree.setdefault(int(fields[1]), []).append(int(name))
    found, todo = set(), [pid]
    while todo:
        for c in tree.get(todo.pop(), ()):
            found.add(c)
            todo.append(c)
    return found


@requires_root
def test_model_exits_2_and_says_how_many_transitions_could_not_run(faults_so: Path) -> None:
    p = run_cli("model", env={"UIDPROBE_FAULT": "crash", "LD_PRELOAD": str(faults_so)})
    assert p.returncode == cli.EX_INCOMPLETE, p.stderr
    assert p.stdout.startswith("uid model: 27 states, 2376 transitions (0 ran)")
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("uidprobe: 2376 of 2376 transitions could not run (first: ")


@requires_root
def test_model_that_ran_everything_exits_0() -> None:
    p = run_cli("model", "--quiet")
    assert (p.returncode, p.stderr) == (0, "")
    assert "(2376 ran)" in p.stdout


@requires_root
def test_import_time_live_probe_is_bounded_and_falls_back_to_0(faults_so: Path, tmp_path: Path) -> None:
    from uidprobe.resolve import LIVE_TIMEOUT

    code = (
        "import time; t = time.monotonic()\n"
        "from uidprobe import config\n"
        "ones = sum(v for n, v in config.VARS.items() if n != 'SOURCE')\n"
        "print(round(time.monotonic() - t, 2), config.SOURCE, ones)\n"
    )
    env = {**HANG, "LD_PRELOAD": str(faults_so), "UIDPROBE_STORE": str(tmp_path / "none")}
    p = run_python(code, env=env)
    assert p.returncode == 0, p.stderr
    took, source, total = p.stdout.split()
    assert source == "probe" and total == "0"
    assert float(took) < 12 * LIVE_TIMEOUT + 1.5  # ten children at most, each killed after LIVE_TIMEOUT


def run_on_a_terminal(argv: list[str]) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal and stdout on a pipe."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uidprobe", *argv], stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        chunks.append(data)
    assert proc.stdout is not None
    with proc.stdout:
        out = proc.stdout.read().decode()
    proc.wait(timeout=60)
    os.close(master)
    return proc.returncode, out, b"".join(chunks).decode()


@requires_root
def test_model_on_a_terminal_shows_progress_that_disappears() -> None:
    code, out, err = run_on_a_terminal(["model", "--timeout", "2"])
    assert code == 0 and out.startswith("uid model: 27 states")
    assert "uid model: 2376/2376 (100%)" in err and "/s, " in err and "s left" in err
    assert err.endswith("\r\x1b[K")  # the line is erased when done


@requires_root
def test_no_progress_with_quiet_or_on_a_pipe() -> None:
    code, _, err = run_on_a_terminal(["model", "--quiet"])
    assert (code, err) == (0, "")
    p = run_cli("model")
    assert (p.returncode, p.stderr) == (0, "")
