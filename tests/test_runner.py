"""The runner lives exactly as long as one batch (#18 items 2 and 3).

A runner is the caller's child, serves one batch, and dies with the caller
(PR_SET_PDEATHSIG, its parent's pid checked at once); so it holds the
caller's identity and sandbox as they are for that batch, and nothing
privileged outlives the call.  It and its probe children close every
descriptor they were not given.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import requires_cc, requires_root, requires_subreaper, run_python
from procinfo import children_of_this_process, zombies_of_this_process
from uidprobe import _engine
from uidprobe.engine import Engine, Op, Step, default_engine

#: A step that changes nothing and reads every id back.
LOOK = [Step(Op.SETRESUID, (-1, -1, -1))]


def runner_path() -> str:
    path = default_engine().runner
    if path is None:
        pytest.skip("the runner program is not built")
    return path


def test_every_batch_ends_its_runner_and_leaves_no_process_or_zombie() -> None:
    e = Engine()
    for _ in range(5):
        assert e.run(LOOK).completed
    assert children_of_this_process() == []


def test_batches_from_many_threads_at_once_all_complete() -> None:
    e = Engine()
    outs: list[bool] = []

    def work() -> None:
        for _ in range(10):
            outs.append(e.run(LOOK).completed)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outs == [True] * 60
    assert zombies_of_this_process() == []


def test_a_runner_program_that_answers_nothing_falls_back_to_forking_here() -> None:
    e = Engine(_engine, runner="/bin/true")
    assert e.run(LOOK).completed and e.run(LOOK).completed


def test_a_runner_whose_parent_is_not_the_one_it_was_told_ends_at_once() -> None:
    # The caller may die between posix_spawn and PR_SET_PDEATHSIG: then the
    # runner's parent is no longer the pid it was given, and it must not run.
    p = subprocess.run([runner_path(), "1"], input=b"", capture_output=True, timeout=10, check=False)
    assert p.returncode == 6
    p = subprocess.run([runner_path()], input=b"", capture_output=True, timeout=10, check=False)
    assert p.returncode == 1  # no parent named: refused


@requires_root
def test_a_changed_identity_gets_a_runner_with_that_identity() -> None:
    code = (
        "import os\n"
        "from uidprobe.engine import Engine, Op, Step\n"
        "look = [Step(Op.SETRESUID, (-1, -1, -1))]\n"
        "e = Engine()\n"
        "a = e.run(look).records[0].kernel_uids\n"
        "os.setresuid(-1, 1000, -1)\n"
        "b = e.run(look).records[0].kernel_uids\n"
        "os.setresuid(-1, 0, -1)\n"
        "c = e.run(look).records[0].kernel_uids\n"
        "print(tuple(a), tuple(b), tuple(c))\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    # exec makes the saved uid the effective one: the runner started while
    # the caller was at euid 1000 holds (0, 1000, 1000)
    assert proc.stdout.split() == ["(0,", "0,", "0)", "(0,", "1000,", "1000)", "(0,", "0,", "0)"]


@requires_root
@requires_cc
def test_a_stricter_seccomp_filter_added_between_batches_judges_the_next_batch_inside_it() -> None:
    # Stacked filters are normal (a container runtime's, then a service
    # manager's).  Two batches, then a filter under which every set*id call
    # fails with EPERM: the third batch is run, and judged, inside it.
    code = (
        "import json, sys\n"
        "from uidprobe import suite\n"
        "from seccomp_filter import deny_setid_calls\n"
        "def verdicts():\n"
        "    return {n: r.verdict for n, r in suite.run().items() if n != 'POSIX_SAVED_IDS'}\n"
        "deny_setid_calls([])  # a first filter, which refuses nothing\n"
        "before = [verdicts(), verdicts()]\n"
        "deny_setid_calls()\n"
        "print(json.dumps(before + [verdicts()]))\n"
    )
    proc = run_python(code, env={"PYTHONPATH": str(Path(__file__).parent)})
    assert proc.returncode == 0, proc.stderr
    first, second, inside = json.loads(proc.stdout)
    assert True in first.values() and first == second
    assert set(inside) == set(first)
    assert True not in inside.values(), inside


@requires_subreaper
def test_a_subreaper_caller_leaves_no_zombie() -> None:
    # The supervisor of the command line is a subreaper: runners and probe
    # children are its descendants, and every one is reaped.
    code = (
        "import ctypes\n"
        "from uidprobe.engine import Engine, Op, Step\n"
        "from procinfo import zombies_of_this_process\n"
        "assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER\n"
        "e = Engine()\n"
        "ok = all(e.run([Step(Op.SETRESUID, (-1, -1, -1))]).completed for _ in range(3))\n"
        "print(ok, zombies_of_this_process())\n"
    )
    proc = run_python(code, env={"PYTHONPATH": str(Path(__file__).parent)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "[]"]


def test_a_step_list_changed_in_place_is_reported_with_the_steps_that_ran() -> None:
    # Engine.run takes any sequence of steps.  The second run's child calls
    # setresuid(0, 0, 0); as root it reads back exactly what the first
    # child's setresuid(-1, -1, -1) did, so the bytes match, and a cache
    # keyed by the list would return the Outcome naming the old step.
    e = Engine()
    steps = [Step(Op.SETRESUID, (-1, -1, -1))]
    first = e.run(steps)
    steps[0] = Step(Op.SETRESUID, (0, 0, 0))
    second = e.run(steps)
    assert first.completed and second.completed
    assert second.records[0].step == Step(Op.SETRESUID, (0, 0, 0))


# ------------------------------------------------------------ descriptors

#: Open a file without FD_CLOEXEC, start a batch whose children hang (the
#: hang fault profile) through the runner or forked here, and print the
#: descriptor's number, then wait.
_HOLDER = (
    "import os, sys\n"
    "from uidprobe.engine import Engine, Op, Step\n"
    "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
    "os.set_inheritable(fd, True)\n"
    "print(fd, flush=True)\n"
    "Engine().run([Step(Op.SETRESUID, (-1, -1, -1))], timeout=30, via=sys.argv[2])\n"
)


def _descendants(pid: int) -> list[int]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(Path(f"/proc/{name}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            except OSError:
                continue
            tree.setdefault(ppid, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for c in tree.get(todo.pop(), ()):
            found.append(c)
            todo.append(c)
    return found


def _open_targets(pid: int) -> set[str]:
    targets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return targets


@pytest.mark.parametrize("via", ["spawn", "fork"])
def test_an_inherited_descriptor_is_not_open_in_the_runner_or_a_probe_child(
    faults_so: Path, tmp_path: Path, via: str
) -> None:
    if via == "spawn":
        runner_path()
    secret = tmp_path / "inherited"
    secret.write_text("the caller's, not the probes'")
    env = {**os.environ, "UIDPROBE_FAULT": "hang", "LD_PRELOAD": str(faults_so)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(secret), via], env=env, stdout=subprocess.PIPE, close_fds=False
    )
    below: list[int] = []
    try:
        assert holder.stdout is not None
        holder.stdout.readline()
        assert str(secret) in _open_targets(holder.pid)  # the caller has it
        deadline = time.monotonic() + 10
        while len(below) < (2 if via == "spawn" else 1):
            assert time.monotonic() < deadline, "no probe child was started"
            time.sleep(0.02)
            below = _descendants(holder.pid)
        time.sleep(0.1)  # past their first instructions: hanging in setresuid
        for pid in below:
            assert str(secret) not in _open_targets(pid), f"open in {pid}"
        probe_child = below[-1]  # the runner's child, or the caller's
        assert len(os.listdir(f"/proc/{probe_child}/fd")) == 1  # the pipe that tells its end
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    # Without a supervisor too, the runner and its children die with the caller.
    deadline = time.monotonic() + 2
    while any(_alive(p) for p in below) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [p for p in below if _alive(p)] == []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")
