"""The kept runner: one runner serves many batches, and never outlives,
outranks or escapes the process context it was started for.

Starting the runner costs more than the probes it forks, so an Engine keeps
one between batches.  These tests pin what that must never cost: it is not
the caller's child, it ends by itself, it is replaced when the caller's
identity or sandbox changes, a permanent drop and a fork leave no way to it,
and nothing is lost when it dies between batches.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from helpers import requires_root, run_python
from procinfo import zombies_of_this_process
from uidprobe import _engine
from uidprobe.engine import RUNNER_IDLE_MS, Engine, Op, Step

#: A step that changes nothing and reads every id back: the child's (and so
#: the runner's) identity.
LOOK = [Step(Op.SETRESUID, (-1, -1, -1))]


#: The start of a test program run in its own interpreter: an Engine and LOOK.
SUBPROCESS_ENGINE = (
    "import os\nfrom uidprobe.engine import Engine, Op, Step\nlook = [Step(Op.SETRESUID, (-1, -1, -1))]\ne = Engine()\n"
)


def _state(pid: int) -> str | None:
    """The process's state letter, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _ended(pid: int, within: float = 10.0) -> bool:
    """Has ``pid`` exited (gone, or a zombie awaiting its reaper)?"""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _state(pid) in (None, "Z"):
            return True
        time.sleep(0.02)
    return False


def _keep(e: Engine) -> int:
    """Two batches in a row: the second starts the kept runner.  Its pid."""
    assert e.run(LOOK).completed and e.run(LOOK).completed
    assert e.runner_pid is not None
    return e.runner_pid


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_repeated_batches_are_served_by_one_runner() -> None:
    e = Engine()
    try:
        first = _keep(e)
        for _ in range(5):
            assert e.run(LOOK).completed
        assert e.runner_pid == first
    finally:
        e.close()


def test_a_lone_batch_leaves_no_runner_behind() -> None:
    # The command line, a live probe at import, configure: one batch each.
    e = Engine()
    assert e.run(LOOK).completed
    assert e.runner_pid is None
    assert zombies_of_this_process() == []


def test_the_kept_runner_is_not_a_child_of_the_caller() -> None:
    e = Engine()
    try:
        pid = _keep(e)
        assert _ppid(pid) != os.getpid()
        assert zombies_of_this_process() == []
    finally:
        e.close()


def test_the_kept_runner_ends_by_itself_when_idle() -> None:
    e = Engine()
    pid = _keep(e)
    time.sleep(RUNNER_IDLE_MS / 1000)
    assert _ended(pid)
    assert e.run(LOOK).completed  # the next batch notices, and runs on a runner of its own
    assert e.runner_pid != pid
    e.close()


def test_close_ends_the_runner_at_once() -> None:
    e = Engine()
    pid = _keep(e)
    e.close()
    assert e.runner_pid is None
    assert _ended(pid, within=RUNNER_IDLE_MS / 2000)  # EOF, not the idle timer


def test_a_runner_killed_between_batches_is_replaced_and_the_batch_still_runs() -> None:
    e = Engine()
    try:
        pid = _keep(e)
        os.kill(pid, signal.SIGKILL)
        assert _ended(pid)
        out = e.run(LOOK)
        assert out.completed and len(out.records) == 1
        assert e.runner_pid not in (None, pid)
    finally:
        e.close()


def test_the_runners_descriptors_close_on_exec() -> None:
    e = Engine()
    try:
        _keep(e)
        r = e._kept
        for fd in (r.to, r.__getattribute__("from"), r.pidfd):
            if fd >= 0:
                assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        e.close()


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
    e.close()
    assert outs == [True] * 60
    assert zombies_of_this_process() == []


def test_keep_runner_false_spawns_one_runner_per_batch() -> None:
    e = Engine(keep_runner=False)
    assert e.run(LOOK).completed and e.run(LOOK).completed
    assert e.runner_pid is None
    assert zombies_of_this_process() == []


def test_a_runner_program_that_cannot_serve_is_used_one_batch_at_a_time() -> None:
    # An older or foreign runner exits on "serve": the engine notes it and
    # falls back (here to forking, as /bin/true answers nothing at all).
    e = Engine(_engine, runner="/bin/true")
    assert e.run(LOOK).completed and e.run(LOOK).completed
    assert e.keep_runner is False and e.runner_pid is None


@requires_root
def test_a_changed_identity_gets_a_runner_with_that_identity() -> None:
    code = SUBPROCESS_ENGINE + (
        "e.run(look)\n"
        "a = e.run(look).records[0].kernel_uids; pa = e.runner_pid\n"
        "os.setresuid(-1, 1000, -1)\n"
        "b = e.run(look).records[0].kernel_uids; pb = e.runner_pid\n"
        "os.setresuid(-1, 0, -1)\n"
        "c = e.run(look).records[0].kernel_uids; pc = e.runner_pid\n"
        "print(tuple(a), tuple(b), tuple(c), len({pa, pb, pc}))\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    # exec makes the saved uid the effective one: the runner started while
    # the caller was at euid 1000 holds (0, 1000, 1000)
    assert proc.stdout.split() == ["(0,", "0,", "0)", "(0,", "1000,", "1000)", "(0,", "0,", "0)", "3"]


@requires_root
def test_no_new_privs_set_after_the_runner_started_gets_a_new_runner() -> None:
    code = (
        "import ctypes\n"
        "from uidprobe import _engine\n"
        "from uidprobe.engine import Engine, Op, Step\n"
        "e = Engine()\n"
        "e.run([Step(Op.SETRESUID, (-1, -1, -1))]); e.run([Step(Op.SETRESUID, (-1, -1, -1))])\n"
        "before = e.runner_pid\n"
        "assert ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS\n"
        "e.run([Step(Op.SETRESUID, (-1, -1, -1))])\n"
        "print(before != e.runner_pid)\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


@requires_root
def test_a_permanent_drop_closes_the_kept_runner_before_dropping() -> None:
    code = (
        "import os, time\n"
        "from uidprobe import suite\n"
        "from uidprobe.engine import default_engine\n"
        "from uidprobe.privileges import Switcher\n"
        "suite.run()\n"
        "values = {n: r.value for n, r in suite.run().items()}\n"
        "pid = default_engine().runner_pid\n"
        "assert pid is not None\n"
        "Switcher(values).drop_permanently(65534, 65534)\n"
        "def link(fd):\n"
        "    try:\n"
        "        return os.readlink(f'/proc/self/fd/{fd}')\n"
        "    except OSError:\n"
        "        return ''  # the descriptor listdir itself used\n"
        "pipes = [fd for fd in os.listdir('/proc/self/fd') if int(fd) > 2 and link(fd).startswith('pipe:')]\n"
        "print(pid, default_engine().runner_pid, len(pipes))\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    pid, now, pipes = proc.stdout.split()
    assert now == "None" and pipes == "0"
    assert _ended(int(pid), within=RUNNER_IDLE_MS / 2000)


def test_a_forked_child_holds_no_way_to_the_parents_runner() -> None:
    code = SUBPROCESS_ENGINE + (
        "e.run(look); e.run(look); parent_runner = e.runner_pid\n"
        "fds = [e._kept.to, getattr(e._kept, 'from')]\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    closed = all(not os.path.exists(f'/proc/self/fd/{fd}') for fd in fds)\n"
        "    ok = e.runner_pid is None and closed and e.run(look).completed\n"
        "    os._exit(0 if ok and e.runner_pid != parent_runner else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status), e.run(look).completed, e.runner_pid == parent_runner)\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "True", "True"]


def test_a_subreaper_caller_uses_one_runner_per_batch_and_leaves_no_zombie() -> None:
    # The detached runner would be reparented to a subreaper (or PID 1),
    # which is the caller itself here: it must not keep one.
    code = (
        "import ctypes, os\n"
        "from uidprobe import _engine\n"
        "from uidprobe.engine import Engine, Op, Step\n"
        "from procinfo import zombies_of_this_process\n"
        "assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER\n"
        "e = Engine()\n"
        "ok = all(e.run([Step(Op.SETRESUID, (-1, -1, -1))]).completed for _ in range(3))\n"
        "print(ok, e.runner_pid, zombies_of_this_process())\n"
    )
    proc = run_python(code, env={"PYTHONPATH": str(Path(__file__).parent)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "None", "[]"]


@requires_root
def test_a_caller_that_cannot_prove_its_privilege_uses_a_runner_per_batch() -> None:
    # In a user namespace mapping only uid 0, the id a root runner demands
    # cannot be claimed (not mapped): the engine stops keeping runners and
    # every batch still completes on a runner of its own.
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    code = SUBPROCESS_ENGINE + (
        "outs = [e.run(look).completed for _ in range(4)]\nprint(all(outs), e.keep_runner, e.runner_pid)\n"
    )
    proc = run_python(code, prefix=["unshare", "-U", "-r"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False", "None"]
