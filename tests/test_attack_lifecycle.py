"""The command's lifecycle, attacked the way a caller's environment does it
(#18, after the supervisor): what a process inherits from whoever started
it must not break the command nor let another user choose a verdict.

* Standard descriptors closed by the caller (``uidprobe check X >&-``, a
  daemon that closed 0-2): the command still runs and exits with its own
  code, and nothing it opens later takes the number 0, 1 or 2.
* SIGCHLD ignored by the caller (inherited across exec, like every ignored
  signal): the supervisor still waits for its worker, and the runner still
  sees how each probe child ended, so a child that another user killed is
  told from one that finished.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest

from helpers import requires_root, requires_subreaper, requires_tools, run_cli
from test_disturb import HANGS_AS_UID_1, attacked, faults, loop  # noqa: F401 (loop: a fixture)
from test_hardening import pids_cgroup
from test_interrupts import Run
from uidprobe import cli

# Start the program that follows with SIGCHLD ignored, as a parent that set
# SIG_IGN passes it on across exec.
IGNORING_SIGCHLD = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); os.execvp(sys.argv[1], sys.argv[1:])",
]


def closing(*fds: int) -> list[str]:
    """A prefix that runs the command with ``fds`` closed."""
    return ["sh", "-c", 'exec "$@" ' + " ".join(f"{fd}>&-" for fd in fds), "sh"]


def test_a_command_with_standard_output_closed_runs_and_says_nothing() -> None:
    p = run_cli("list", prefix=closing(1))
    assert (p.returncode, p.stderr) == (0, "")


def test_a_command_with_every_standard_descriptor_closed_exits_with_its_own_code() -> None:
    p = run_cli("check", "NO_SUCH_NAME", prefix=closing(0, 1, 2))
    assert p.returncode == 64  # a usage error, said on a closed stderr: not a crash (70, 1)


@requires_root
def test_a_command_with_standard_error_closed_still_answers() -> None:
    p = run_cli("check", "USESETEUID", prefix=closing(2))
    assert p.returncode == 0
    assert p.stdout.startswith("USESETEUID: yes: ")


@requires_root
def test_a_command_started_with_sigchld_ignored_exits_with_its_own_code() -> None:
    p = run_cli("check", "USESETEUID", prefix=IGNORING_SIGCHLD)
    assert (p.returncode, p.stderr) == (0, "")
    assert p.stdout.startswith("USESETEUID: yes: ")


@requires_root
@requires_tools
def test_a_caller_ignoring_sigchld_still_tells_a_child_killed_from_outside(loop: str, faults_so: Path) -> None:  # noqa: F811
    # The runner inherits SIG_IGN for SIGCHLD across exec: its children were
    # then reaped by the kernel, their end unknown, and a child that uid 1
    # killed looked like one whose status was lost, not like a disturbed one.
    code = "import signal; signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n" + HANGS_AS_UID_1
    result = attacked(loop, [(1, int(signal.SIGKILL), False)], [sys.executable, "-c", code], faults(faults_so))
    out = json.loads(result["stdout"])
    assert out["signal"] == signal.SIGKILL and not out["timed_out"], out
    assert out["disturbed"] == "killed by SIGKILL, which uidprobe did not send"


@requires_root
@pytest.mark.parametrize("limit", [2, 3])
def test_model_under_a_pids_limit_that_refuses_its_threads_says_what_could_not_run(limit: int) -> None:
    # model spreads a batch over one runner per CPU, each driven by a thread;
    # a pids limit counts threads too.  Where none could start, model ended
    # in a RuntimeError traceback (exit 70) instead of its one line.
    # At 2 (the supervisor and its worker) nothing more can start; at 3 the
    # worker may fork every child itself, one at a time, once no runner can
    # start: then every transition ran and there is nothing to say.
    with pids_cgroup(limit) as prefix:
        p = run_cli("model", "--quiet", prefix=prefix)
    if limit == 3 and p.returncode == cli.EX_OK:
        assert p.stderr == ""
        return
    assert p.returncode == cli.EX_INCOMPLETE, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and " transitions could not run (first: " in lines[0], lines


@requires_root
@requires_subreaper
def test_ctrl_c_as_pid_1_of_a_pid_namespace_without_its_own_proc(faults_so: Path, tmp_path: Path) -> None:
    # `unshare --pid --fork` without --mount-proc: /proc shows the parent
    # namespace, whose pids mean other processes here.  The supervisor walked
    # that tree from "its" pid 1 (the machine's init), signalled hundreds of
    # numbers, said "ended 833 processes" and, having missed its own worker,
    # waited 5 s to say "cleanup not verified".
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    tmp_path.chmod(0o755)
    run = Run(faults_so, tmp_path / "v", ["model", "--timeout", "0.5"], ["unshare", "--pid", "--fork"])
    run.wait_for_hanging_children()
    seen = len(run.processes())
    os.killpg(run.proc.pid, signal.SIGINT)
    _, err = run.proc.communicate(timeout=30)
    assert run.proc.returncode == 130, err
    m = re.fullmatch(r"uidprobe: interrupted by SIGINT; ended (\d+) process(es)?; nothing left running\n", err.decode())
    assert m is not None, err
    assert 1 <= int(m.group(1)) <= seen + 64  # what ran, and at most a window of children forked since
    assert run.left_after(1.0) == []


# Exec the command with prctl(PR_SET_CHILD_SUBREAPER) refused (EPERM) by a
# seccomp filter, as a sandbox could: the supervisor cannot prove its cleanup.
NO_SUBREAPER = """
import ctypes, errno, os, sys
sys.path.insert(0, {tests!r})
import seccomp_filter as sf
(nr,) = sf.syscall_numbers(("prctl",))
ARG0 = 16 if sys.byteorder == "little" else 20  # seccomp_data.args[0], its low 32 bits
I = sf._Insn
prog = [I(sf.BPF_LD_W_ABS, 0, 0, 0), I(sf.BPF_JEQ_K, 0, 3, nr), I(sf.BPF_LD_W_ABS, 0, 0, ARG0),
        I(sf.BPF_JEQ_K, 0, 1, 36), I(sf.BPF_RET_K, 0, 0, sf.SECCOMP_RET_ERRNO | errno.EPERM),
        I(sf.BPF_RET_K, 0, 0, sf.SECCOMP_RET_ALLOW)]
array = (I * len(prog))(*prog)
libc = ctypes.CDLL(None, use_errno=True)
arg = ctypes.c_ulong
if libc.prctl(sf.PR_SET_SECCOMP, arg(sf.SECCOMP_MODE_FILTER), ctypes.byref(sf._Prog(len(prog), array)), arg(0), arg(0)):
    raise OSError(ctypes.get_errno(), "seccomp")
os.execvp(sys.argv[1], sys.argv[1:])
"""


@requires_root
def test_without_the_subreaper_ctrl_c_says_the_cleanup_is_not_verified(faults_so: Path, tmp_path: Path) -> None:
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler (the filter reads <sys/syscall.h>)")
    tmp_path.chmod(0o755)
    prefix = [sys.executable, "-c", NO_SUBREAPER.format(tests=str(Path(__file__).parent))]
    run = Run(faults_so, tmp_path / "v", ["model", "--timeout", "0.5"], prefix)
    run.wait_for_hanging_children()
    os.killpg(run.proc.pid, signal.SIGINT)
    _, err = run.proc.communicate(timeout=30)
    assert run.proc.returncode == 130, err
    assert re.fullmatch(
        r"uidprobe: interrupted by SIGINT; ended \d+ process(es)?; "
        r"cleanup not verified \(cannot be the reaper of its children: EPERM\)\n",
        err.decode(),
    ), err
    assert run.left_after(1.0) == []  # the parent-death signals still took them


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
