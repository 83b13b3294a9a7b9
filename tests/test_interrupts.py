"""Interrupts and bounds (#14 item 1) and progress (item 2): Ctrl-C and
SIGTERM end a command at once with 130/143, one line and no process left;
a model whose transitions could not run exits 2; the import-time live
probe is bounded; long work shows a self-erasing progress line on a
terminal only."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import requires_root, run_cli, run_python
from uidprobe import cli

HANG = {"UIDPROBE_FAULT": "hang"}


def descendants(pid: int) -> set[int]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            tree.setdefault(int(stat.rsplit(b")", 1)[1].split()[1]), []).append(int(name))
    found, todo = set(), [pid]
    while todo:
        for c in tree.get(todo.pop(), ()):
            found.add(c)
            todo.append(c)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")


def interrupt(faults_so: Path, store: Path, argv: list[str], sig: int) -> tuple[int, str, float, list[int]]:
    """Start ``uidprobe ARGV`` with hanging probe children, send ``sig`` once
    they exist: (exit status, stderr, seconds to end, processes left alive)."""
    env = {**os.environ, **HANG, "LD_PRELOAD": str(faults_so), "UIDPROBE_STORE": str(store)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uidprobe", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 20
    while not any(alive(p) for p in descendants(proc.pid) if p != proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # wait until probe children exist (hanging ones)
    time.sleep(0.3)
    below = descendants(proc.pid)
    assert below, "no child was started"
    start = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=10)
    took = time.monotonic() - start
    time.sleep(0.2)
    return proc.returncode, err.decode(), took, [p for p in below if alive(p)]


@requires_root
@pytest.mark.parametrize(
    ("argv", "sig"),
    [
        (["model", "--timeout", "0.05"], signal.SIGINT),
        (["model", "--timeout", "0.05"], signal.SIGTERM),
        (["check", "USESETEUID"], signal.SIGINT),
        (["configure", "--timeout", "3"], signal.SIGTERM),
        (["model", "--timeout", "0.05"], signal.SIGINT),
    ],
)
def test_a_signal_ends_the_command_at_once_with_one_line_and_nothing_left(
    faults_so: Path, tmp_path: Path, argv: list[str], sig: int
) -> None:
    tmp_path.chmod(0o755)
    code, err, took, left = interrupt(faults_so, tmp_path / "v", argv, sig)
    assert took < 3  # a bound on a hang, not a speed target
    assert code == 128 + sig
    assert "Traceback" not in err
    word = "interrupted by SIGINT" if sig == signal.SIGINT else "terminated by SIGTERM"
    assert err.splitlines() == [f"uidprobe: {word}; nothing left running"]
    assert left == []


@requires_root
@pytest.mark.slow
def test_ctrl_c_in_a_loop_of_20_model_runs_leaves_no_process_and_no_traceback(faults_so: Path, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    runs = [interrupt(faults_so, tmp_path / "v", ["model", "--timeout", "0.05"], signal.SIGINT) for _ in range(20)]
    assert [code for code, _, _, _ in runs] == [130] * 20
    assert [err for _, err, _, _ in runs] == ["uidprobe: interrupted by SIGINT; nothing left running\n"] * 20
    assert [p for _, _, _, left in runs for p in left] == []


def test_kill_descendants_kills_a_tree_that_blocks_every_signal_but_the_unblockable() -> None:
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
        assert cli.kill_descendants(proc.pid) == len(tree)
        time.sleep(0.2)
        assert [p for p in tree if alive(p)] == []
    finally:
        proc.kill()
        proc.wait()


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
