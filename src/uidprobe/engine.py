"""Typed face of the C engine (``uidprobe._engine``).

The engine forks a child per step list; the child performs the steps and
reads every id back, the parent collects that trace.  This module only moves
data between Python and C: it knows nothing about what a trace means (that is
``verdicts``) or which steps to run (that is ``scenarios``).

The compiled module is loaded on first use, never at import, so that reading
a persisted verdict (``uidprobe.config``) loads no C extension and forks
nothing.
"""

from __future__ import annotations

import enum
import errno as errno_mod
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

__all__ = [
    "MAX_ARGS",
    "MAX_STEPS",
    "EngineError",
    "Features",
    "Op",
    "Outcome",
    "Record",
    "Step",
    "features",
    "run",
    "run_batch",
]

#: Limits fixed by csrc/engine.h (checked against the compiled module in tests).
MAX_ARGS = 8
MAX_STEPS = 64
DEFAULT_TIMEOUT = 2.0

Ids = tuple[int, int, Optional[int]]


class Op(enum.IntEnum):
    """The calls a step can make; values match ``UP_OP_*`` in csrc/engine.h."""

    SETUID = 1
    SETEUID = 2
    SETREUID = 3
    SETRESUID = 4
    SETGID = 5
    SETEGID = 6
    SETREGID = 7
    SETRESGID = 8
    SETGROUPS = 9

    @property
    def call(self) -> str:
        """The C function's name, e.g. ``"seteuid"``."""
        return self.name.lower()

    @property
    def family(self) -> str:
        """``"uid"``, ``"gid"`` or ``"groups"``: which ids the call changes."""
        if self is Op.SETGROUPS:
            return "groups"
        return "uid" if self.name.endswith("UID") else "gid"


@dataclass(frozen=True)
class Step:
    """One call: ``op(*args)``; for setgroups, ``args`` is the group list."""

    op: Op
    args: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.args) > MAX_ARGS:
            raise ValueError(f"{self.op.call}: at most {MAX_ARGS} arguments")
        for a in self.args:
            if not -1 <= a <= 0xFFFFFFFF:
                raise ValueError(f"{self.op.call}: id {a} out of range")

    def __str__(self) -> str:
        if self.op is Op.SETGROUPS:
            return f"setgroups([{', '.join(map(str, self.args))}])"
        return f"{self.op.call}({', '.join(map(str, self.args))})"


@dataclass(frozen=True)
class Record:
    """What the child saw after one step: the call's result and every id.

    ``uids`` and ``gids`` are (real, effective, saved); saved is ``None`` when
    the C library cannot report it (no getresuid).
    """

    step: Step
    ret: int
    errno: int
    uids: Ids
    gids: Ids
    groups: tuple[int, ...] | None  # None: too many to record, or getgroups failed

    @property
    def ok(self) -> bool:
        return self.ret == 0

    def describe_result(self) -> str:
        """``"ok"`` or ``"failed: EPERM"``."""
        if self.ok:
            return "ok"
        name = errno_mod.errorcode.get(self.errno, str(self.errno))
        return f"failed: {name}"


@dataclass(frozen=True)
class Outcome:
    """How one child ended, and the records it sent before that."""

    records: tuple[Record, ...]
    completed: bool  # every step ran and was reported
    timed_out: bool
    exit_code: int | None
    signal: int | None
    status_known: bool

    def describe_end(self) -> str:
        """A short phrase for a child that did not complete, for reasons."""
        done = f"after {len(self.records)} step(s)"
        if self.timed_out:
            return f"probe child timed out {done} and was killed"
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"probe child was killed by {name} {done}"
        if self.exit_code is not None:
            return f"probe child exited with status {self.exit_code} {done}"
        return f"probe child ended {done} without finishing (exit status unavailable)"


@dataclass(frozen=True)
class Features:
    """Optional C library calls found when the engine was built."""

    getresuid: bool
    setresuid: bool
    getresgid: bool
    setresgid: bool


class EngineError(OSError):
    """The parent could not run a child at all (pipe or fork failed)."""


def _load(module: Any = None) -> tuple[Any, Any]:
    """(ffi, lib) of ``module``, or of the installed engine, loaded now."""
    if module is None:
        from uidprobe import _engine  # deferred: import uidprobe must stay cheap

        module = _engine
    return module.ffi, module.lib


def features(module: Any = None) -> Features:
    """Which optional calls the compiled engine can make."""
    _, lib = _load(module)
    f = lib.up_features()
    return Features(
        getresuid=bool(f & lib.UP_HAVE_GETRESUID),
        setresuid=bool(f & lib.UP_HAVE_SETRESUID),
        getresgid=bool(f & lib.UP_HAVE_GETRESGID),
        setresgid=bool(f & lib.UP_HAVE_SETRESGID),
    )


def _ids(raw: Any, unknown: int) -> Ids:
    saved = int(raw[2])
    return (int(raw[0]), int(raw[1]), None if saved == unknown else saved)


def _fill_steps(ffi: Any, steps: Sequence[Step]) -> Any:
    c_steps = ffi.new("struct up_step[]", max(len(steps), 1))
    for c, step in zip(c_steps, steps):
        c.op = int(step.op)
        c.nargs = len(step.args)
        for i, a in enumerate(step.args):
            c.args[i] = a
    return c_steps


def _outcome(ffi: Any, lib: Any, steps: Sequence[Step], c_records: Any, c_out: Any) -> Outcome:
    if c_out.error:
        call = ffi.string(c_out.failed_call).decode() if c_out.failed_call else "engine"
        raise EngineError(c_out.error, f"{call}: {os.strerror(c_out.error)}")
    records = []
    for i in range(c_out.nrecords):
        r = c_records[i]
        if not 0 <= r.index < len(steps):
            break  # defensive: a record we did not ask for ends the trace
        n = r.ngroups
        groups = tuple(int(r.groups[j]) for j in range(n)) if 0 <= n <= lib.UP_MAX_GROUPS else None
        records.append(
            Record(
                step=steps[r.index],
                ret=r.ret,
                errno=r.err,
                uids=_ids(r.uid, lib.UP_ID_UNKNOWN),
                gids=_ids(r.gid, lib.UP_ID_UNKNOWN),
                groups=groups,
            )
        )
    return Outcome(
        records=tuple(records),
        completed=bool(c_out.completed) and len(records) == len(steps),
        timed_out=bool(c_out.timed_out),
        exit_code=c_out.exit_code if c_out.exited else None,
        signal=c_out.signal if c_out.signaled else None,
        status_known=bool(c_out.exited or c_out.signaled),
    )


def _timeout_ms(timeout: float) -> int:
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, not {timeout!r}")
    return max(1, int(timeout * 1000))


def _spawn_parallel(
    lib: Any,
    runner: bytes,
    c_steps: Any,
    counts: Any,
    n: int,
    c_records: Any,
    c_outs: Any,
    timeout_ms: int,
    jobs: int,
) -> int:
    """up_spawn_batch over ``jobs`` contiguous slices at once; 0 if all ran.

    cffi releases the GIL around C calls, so threads give real parallelism;
    each slice writes only its own part of the shared result arrays.
    """
    jobs = max(1, min(jobs, n))
    if jobs == 1:
        return int(lib.up_spawn_batch(runner, c_steps, counts, n, c_records, c_outs, timeout_ms))
    import threading

    bounds = [n * i // jobs for i in range(jobs + 1)]
    offsets = [0]
    for i in range(n):
        offsets.append(offsets[-1] + counts[i])
    codes = [0] * jobs

    def work(j: int) -> None:
        lo, hi = bounds[j], bounds[j + 1]
        codes[j] = lib.up_spawn_batch(
            runner, c_steps + offsets[lo], counts + lo, hi - lo, c_records + lo * MAX_STEPS, c_outs + lo, timeout_ms
        )

    threads = [threading.Thread(target=work, args=(j,)) for j in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0 if all(c == 0 for c in codes) else -1


def runner_path(module: Any = None) -> str | None:
    """The runner program installed beside the engine, if it is usable here."""
    if module is not None:
        return None  # a custom build (tests) has no runner of its own
    from uidprobe import _engine

    path = os.path.join(os.path.dirname(os.path.abspath(_engine.__file__)), "_runner")
    return path if os.access(path, os.X_OK) else None


def run(steps: Sequence[Step], timeout: float = DEFAULT_TIMEOUT, module: Any = None, via: str = "auto") -> Outcome:
    """Run ``steps`` in one forked child and return its trace.

    The child is killed after ``timeout`` seconds.  Raises EngineError only
    when no child could be started; anything the child does (fail, crash,
    hang) is reported in the Outcome.  ``module`` selects another build of
    the engine (tests use one built without getresuid); ``via`` as for
    run_batch.
    """
    return run_batch([steps], timeout, module, via)[0]


def run_batch(
    scenarios: Sequence[Sequence[Step]],
    timeout: float = DEFAULT_TIMEOUT,
    module: Any = None,
    via: str = "auto",
    jobs: int = 1,
) -> list[Outcome]:
    """Run each step list in its own child, back to back, in one C call.

    ``via="spawn"`` forks the children from the small runner program (cost
    independent of this process's size); ``"fork"`` forks them from this
    process; ``"auto"`` spawns when the runner is installed and usable and
    falls back to forking (e.g. after a permanent drop made the installation
    unreadable).  ``jobs`` > 1 splits a spawned batch over that many runners
    working at once (the transition model uses the machine's cores).
    """
    if via not in ("auto", "spawn", "fork"):
        raise ValueError(f"via must be 'auto', 'spawn' or 'fork', not {via!r}")
    for s in scenarios:
        if len(s) > MAX_STEPS:
            raise ValueError(f"at most {MAX_STEPS} steps per child, got {len(s)}")
    timeout_ms = _timeout_ms(timeout)
    ffi, lib = _load(module)
    n = len(scenarios)
    if n == 0:
        return []
    flat = [step for s in scenarios for step in s]
    c_steps = _fill_steps(ffi, flat)
    counts = ffi.new("int[]", [len(s) for s in scenarios])
    c_records = ffi.new("struct up_record[]", n * MAX_STEPS)
    c_outs = ffi.new("struct up_outcome[]", n)
    runner = runner_path(module) if via != "fork" else None
    if via == "spawn" and runner is None:
        raise EngineError(errno_mod.ENOENT, "the runner program is not installed or not executable")
    if runner is not None:
        rc = _spawn_parallel(lib, runner.encode(), c_steps, counts, n, c_records, c_outs, timeout_ms, jobs)
        if rc != 0 and via == "auto":
            runner = None  # fall back: fork from this process
    if runner is None:
        lib.up_run_batch(c_steps, counts, n, c_records, c_outs, timeout_ms)
    return [_outcome(ffi, lib, s, c_records + i * MAX_STEPS, c_outs[i]) for i, s in enumerate(scenarios)]
