"""The command's process lifecycle: a supervisor, a worker, and proof that
nothing is left running.

``uidprobe`` runs its command in a forked *worker* while this process (the
*supervisor*) waits.  The engine sits in C for a whole batch and forks root
processes below the worker (a runner, probe children that block every
signal); a worker process can be frozen and killed as a whole, a thread
could not.

* The supervisor is the reaper of everything below it
  (``PR_SET_CHILD_SUBREAPER``): whatever dies first, its orphans come back
  to it, never to PID 1.  So when ``waitpid`` says it has no child
  (``ECHILD``), nothing below it is running: no descendant without a living
  parent in between.
* The worker, every runner and every probe child ends when its parent dies
  (``PR_SET_PDEATHSIG``, checked against the parent's pid right after it is
  set; csrc/spawn.c and runner.c do the same in C): SIGKILL to the
  supervisor takes the whole tree with it.
* On SIGINT, SIGTERM or SIGHUP (to the supervisor alone or to the whole
  process group, as a terminal sends them) the supervisor stops every
  descendant (SIGSTOP cannot be blocked, and a stopped process cannot fork),
  kills them all, reaps until ``ECHILD``, and only then says one line naming
  how many processes it ended, and exits 128 + the signal number.  Where
  the subreaper setting was refused, the line says the cleanup is not
  verified instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import time
from collections.abc import Callable

__all__ = ["SIGNALS", "end_descendants", "run", "stop_and_kill"]

#: The signals that end a supervised command (exit 128 + the number).
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_WORDS = {signal.SIGINT: "interrupted by", signal.SIGTERM: "terminated by", signal.SIGHUP: "hung up by"}

# <linux/prctl.h>
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

#: How long the supervisor waits for killed processes to be reaped before it
#: says that the cleanup is not verified.
REAP_LIMIT = 5.0

_INTERNAL_ERROR = 70  # cli.EX_SOFTWARE


def _prctl(option: int, arg: int) -> int:
    """prctl(option, arg): 0, or the errno (ENOSYS off Linux)."""
    if not sys.platform.startswith("linux"):
        return errno.ENOSYS
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)):
        return ctypes.get_errno() or errno.EINVAL
    return 0


def _children_by_parent() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return tree
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone since the listing
        tree.setdefault(ppid, []).append(int(name))
    return tree


def stop_and_kill(root: int) -> set[int]:
    """SIGSTOP every descendant of ``root`` until no new one appears, then
    SIGKILL them all; the pids signalled.  Found by parent pid: below a
    subreaper that is every descendant (an orphan's parent becomes it)."""
    stopped: set[int] = set()
    for _ in range(50):
        tree = _children_by_parent()
        todo, new = [root], []
        while todo:
            for child in tree.get(todo.pop(), ()):
                todo.append(child)
                if child not in stopped:
                    new.append(child)
        if not new:
            break
        for pid in new:
            with contextlib.suppress(OSError):  # gone already
                os.kill(pid, signal.SIGSTOP)
            stopped.add(pid)
    for pid in stopped:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return stopped


def _reap() -> bool:
    """Collect every child that has ended; True once there is none at all."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        except InterruptedError:
            continue
        if pid == 0:
            return False


def end_descendants(limit: float = REAP_LIMIT) -> tuple[int, bool]:
    """Kill every descendant of this process and reap until it has no child.

    Returns (how many processes were ended, whether none is left: ECHILD
    within ``limit`` seconds).  Without a child there is no descendant;
    that it is the *only* proof needed holds while this process is a
    subreaper (the caller's business).
    """
    me, ended = os.getpid(), set()
    deadline = time.monotonic() + limit
    while not _reap():
        ended |= stop_and_kill(me)
        if time.monotonic() > deadline:
            return len(ended), False
        time.sleep(0.002)  # SIGKILL is delivered; exiting takes a moment
    return len(ended), True


# ------------------------------------------------------------- supervisor

_SUBREAPER: list[int] = []  # the errno of PR_SET_CHILD_SUBREAPER (0: set)


def _plural(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def _on_signal(signum: int, frame: object) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # one cleanup, one line
    ended, gone = end_descendants()
    refused = _SUBREAPER[0] if _SUBREAPER else errno.ENOSYS
    if gone and not refused:
        tail = "nothing left running"
    elif refused:
        tail = f"cleanup not verified (cannot be the reaper of its children: {errno.errorcode.get(refused, refused)})"
    else:
        tail = f"cleanup not verified (processes still running after {REAP_LIMIT:g} s)"
    erase = "\r\033[K" if sys.stderr.isatty() else ""
    name = signal.Signals(signum).name
    with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
        os.write(
            2, f"{erase}uidprobe: {_WORDS[signal.Signals(signum)]} {name}; ended {_plural(ended)}; {tail}\n".encode()
        )
    os._exit(128 + signum)


def _ignore(signum: int, frame: object) -> None:
    """In the worker: the supervisor decides (a handler, not SIG_IGN, so that
    programs the worker starts get the default action back at exec)."""


def _worker(work: Callable[[], int], parent: int) -> None:
    """The forked worker's whole life.  Never returns."""
    code = _INTERNAL_ERROR
    try:
        # It must not outlive the supervisor: a worker left running as root
        # would go on probing and write its output after the caller gave up.
        if _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) not in (0, errno.ENOSYS) or os.getppid() != parent:
            os._exit(_INTERNAL_ERROR)  # the supervisor died first (or cannot be followed)
        code = work()
    except SystemExit as e:  # --help, --version
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else _INTERNAL_ERROR
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(code)


def run(work: Callable[[], int]) -> int:
    """Run ``work()`` in a supervised worker process; its exit status.

    SIGINT, SIGTERM and SIGHUP end it as the module says, and never return
    here.  Where the worker cannot be forked (EAGAIN under a pids limit),
    ``work`` runs in this process, unsupervised.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    _SUBREAPER[:] = [_prctl(_PR_SET_CHILD_SUBREAPER, 1)]
    parent = os.getpid()
    # Signals wait until each side has its handlers: none is lost to the fork.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return work()
    if pid == 0:
        for s in SIGNALS:
            signal.signal(s, _ignore)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        _worker(work, parent)
    for s in SIGNALS:
        signal.signal(s, _on_signal)
    signal.pthread_sigmask(signal.SIG_SETMASK, old)
    _, status = os.waitpid(pid, 0)  # retried after a signal (PEP 475); _on_signal never returns
    # The worker reaped what it started (and had it died first, its runner
    # and probe children died with it).  Reaping for others is not ours.
    if _SUBREAPER[0] == 0:
        _prctl(_PR_SET_CHILD_SUBREAPER, 0)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
