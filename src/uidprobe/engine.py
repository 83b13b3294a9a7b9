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
    "Caps",
    "Creds",
    "EngineError",
    "Expect",
    "Features",
    "Op",
    "Outcome",
    "Record",
    "Step",
    "SwitchPlan",
    "SwitchResult",
    "SwitchStatus",
    "features",
    "read_creds",
    "run",
    "run_batch",
]

#: Limits fixed by csrc/engine.h (checked against the compiled module in tests).
MAX_ARGS = 8
MAX_STEPS = 64
#: The most supplementary groups an in-process switch sets and verifies.
MAX_SWITCH_GROUPS = 256
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
    CAPS_RAISE = 10  # effective := permitted
    CAPS_CLEAR = 11  # permitted, effective, inheritable := {}
    KEEPCAPS = 12  # prctl(PR_SET_KEEPCAPS, args[0])
    AMBIENT_CLEAR = 13  # prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)

    @property
    def call(self) -> str:
        """The C function's name, e.g. ``"seteuid"``."""
        return _CALL_NAMES.get(self, self.name.lower())

    @property
    def family(self) -> str:
        """``"uid"``, ``"gid"``, ``"groups"`` or ``"caps"``: what the call changes."""
        if self is Op.SETGROUPS:
            return "groups"
        if self.value >= Op.CAPS_RAISE.value:
            return "caps"
        return "uid" if self.name.endswith("UID") else "gid"


_CALL_NAMES = {
    Op.CAPS_RAISE: "capset-raise",
    Op.CAPS_CLEAR: "capset-clear",
    Op.KEEPCAPS: "prctl-keepcaps",
    Op.AMBIENT_CLEAR: "prctl-ambient-clear",
}


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
        if self.op is Op.CAPS_RAISE:
            return "capset(effective = permitted)"
        if self.op is Op.CAPS_CLEAR:
            return "capset(every set empty)"
        if self.op is Op.KEEPCAPS:
            return f"prctl(PR_SET_KEEPCAPS, {self.args[0]})"
        if self.op is Op.AMBIENT_CLEAR:
            return "prctl(PR_CAP_AMBIENT_CLEAR_ALL)"
        return f"{self.op.call}({', '.join(map(str, self.args))})"


def emulation_reason(which: str, libc: object, kernel: object) -> str:
    """Why ids cannot be believed when the C library and the kernel disagree."""
    return f"the C library reports {which} {libc} but the kernel holds {kernel}: an emulated root such as fakeroot"


@dataclass(frozen=True)
class Record:
    """What the child saw after one step: the call's result and every id.

    ``uids`` and ``gids`` are (real, effective, saved) as the C library reads
    them back; saved is ``None`` when it cannot (no getresuid).
    ``kernel_uids`` and ``kernel_gids`` are the same as the kernel reports
    them by raw system call: an emulated C library (fakeroot) can fake the
    first pair but not these.
    """

    step: Step
    ret: int
    errno: int
    uids: Ids
    gids: Ids
    groups: tuple[int, ...] | None  # None: too many to record, or getgroups failed
    kernel_uids: Ids | None = None  # None: not read (a record made up by the model)
    kernel_gids: Ids | None = None
    fsuid: int | None = None
    fsgid: int | None = None
    cap_effective: int | None = None
    cap_permitted: int | None = None

    @property
    def ok(self) -> bool:
        return self.ret == 0

    def describe_result(self) -> str:
        """``"ok"`` or ``"failed: EPERM"``."""
        if self.ok:
            return "ok"
        name = errno_mod.errorcode.get(self.errno, str(self.errno))
        return f"failed: {name}"

    def emulation(self) -> str | None:
        """Why the C library's read-back cannot be believed, or None.

        Where the C library reports ids the kernel does not hold, an
        LD_PRELOAD emulation such as fakeroot answers the calls.  Only ids
        both sides could read are compared.
        """
        for what, lib, kern in (("uid", self.uids, self.kernel_uids), ("gid", self.gids, self.kernel_gids)):
            if kern is None:
                continue
            for label, a, b in zip(("real", "effective", "saved"), lib, kern):
                if a is not None and b is not None and b >= 0 and a != b:
                    return emulation_reason(f"{label} {what}", a, b)
        return None


@dataclass(frozen=True)
class Outcome:
    """How one child ended, and the records it sent before that."""

    records: tuple[Record, ...]
    completed: bool  # every step ran and was reported
    timed_out: bool
    exit_code: int | None
    signal: int | None
    status_known: bool
    error: str | None = None  # the child could not be started: "fork: EAGAIN (...)"

    def describe_end(self) -> str:
        """A short phrase for a child that did not complete, for reasons."""
        if self.error is not None:
            return f"could not start a probe child: {self.error}"
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
    #: setresuid/setresgid, where they exist, really set the ids they report
    #: success for (checked at run time; False makes setup use setreuid)
    setresuid_works: bool = True
    setresgid_works: bool = True


class EngineError(OSError):
    """The engine could not be used at all (no runner where one was required)."""


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


def _triple_or_none(raw: Any, unknown: int) -> Ids | None:
    if int(raw[0]) == unknown:
        return None
    return _ids(raw, unknown)


def _outcome(ffi: Any, lib: Any, steps: Sequence[Step], c_records: Any, c_out: Any) -> Outcome:
    if c_out.error:
        # Fork or pipe failed (EAGAIN under a pids limit, ENOMEM): no child,
        # so no evidence.  An outcome, not an exception: the verdict is
        # undetermined with this reason.
        call = ffi.string(c_out.failed_call).decode() if c_out.failed_call else "fork"
        name = errno_mod.errorcode.get(c_out.error, str(c_out.error))
        return Outcome(
            records=(),
            completed=False,
            timed_out=False,
            exit_code=None,
            signal=None,
            status_known=False,
            error=f"{call} failed: {name} ({os.strerror(c_out.error)})",
        )
    unknown = lib.UP_ID_UNKNOWN
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
                uids=_ids(r.uid, unknown),
                gids=_ids(r.gid, unknown),
                groups=groups,
                kernel_uids=_triple_or_none(r.kuid, unknown),
                kernel_gids=_triple_or_none(r.kgid, unknown),
                fsuid=None if r.fsuid == unknown else int(r.fsuid),
                fsgid=None if r.fsgid == unknown else int(r.fsgid),
                cap_effective=int(r.cap_eff) if r.caps_known else None,
                cap_permitted=int(r.cap_prm) if r.caps_known else None,
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


# ------------------------------------------------------ in-process credentials


@dataclass(frozen=True)
class Caps:
    """The capability state of the calling thread (Linux)."""

    effective: int
    permitted: int
    inheritable: int
    ambient: int
    keepcaps: bool
    securebits: int

    @property
    def empty(self) -> bool:
        """Nothing that could bring privilege back: every set empty, keepcaps off."""
        return not (self.effective or self.permitted or self.inheritable or self.ambient or self.keepcaps)

    def describe(self) -> str:
        return (
            f"CapEff={self.effective:#x} CapPrm={self.permitted:#x} CapInh={self.inheritable:#x} "
            f"CapAmb={self.ambient:#x} keepcaps={int(self.keepcaps)} securebits={self.securebits:#x}"
        )


@dataclass(frozen=True)
class Creds:
    """Every credential of the calling thread, read back from the kernel.

    ``uids``/``gids`` come from raw system calls; ``libc_uids``/``libc_gids``
    are what the C library answers (they differ under an emulation such as
    fakeroot).  ``groups`` is sorted without duplicates, None when there are
    more than the engine reads.  ``fsuid``/``fsgid`` come from setfsuid(-1),
    which needs no /proc.
    """

    uids: tuple[int, int, int]
    gids: tuple[int, int, int]
    libc_uids: Ids
    libc_gids: Ids
    fsuid: int | None
    fsgid: int | None
    groups: tuple[int, ...] | None
    caps: Caps | None


def _creds(lib: Any, c: Any) -> Creds:
    unknown = lib.UP_ID_UNKNOWN
    n = c.ngroups
    groups = tuple(sorted({int(c.groups[i]) for i in range(n)})) if 0 <= n <= lib.UP_SWITCH_MAX_GROUPS else None
    caps = (
        Caps(
            effective=int(c.cap_eff),
            permitted=int(c.cap_prm),
            inheritable=int(c.cap_inh),
            ambient=int(c.cap_amb),
            keepcaps=c.keepcaps > 0,
            securebits=max(0, int(c.securebits)),
        )
        if c.caps_known
        else None
    )
    return Creds(
        uids=(int(c.uid[0]), int(c.uid[1]), int(c.uid[2])),
        gids=(int(c.gid[0]), int(c.gid[1]), int(c.gid[2])),
        libc_uids=_ids(c.libc_uid, unknown),
        libc_gids=_ids(c.libc_gid, unknown),
        fsuid=None if c.fsuid == unknown else int(c.fsuid),
        fsgid=None if c.fsgid == unknown else int(c.fsgid),
        groups=groups,
        caps=caps,
    )


def read_creds(*, caps: bool = False, module: Any = None) -> Creds:
    """The calling thread's credentials, from the kernel (``caps``: also the
    capability sets, keepcaps and securebits)."""
    ffi, lib = _load(module)
    c = ffi.new("struct up_creds *")
    lib.up_read_creds(c, lib.UP_READ_CAPS if caps else 0)
    return _creds(lib, c)


@dataclass(frozen=True)
class Expect:
    """What must hold after one step of an in-process switch (None: not checked)."""

    uids: tuple[int | None, int | None, int | None] | None = None
    gids: tuple[int | None, int | None, int | None] | None = None
    fsuid: int | None = None
    fsgid: int | None = None
    groups: tuple[int, ...] | None = None  # as a set


class SwitchStatus(enum.IntEnum):
    """``UP_SWITCH_*`` in csrc/engine.h."""

    OK = 0  # every step ran and verified
    ROLLED_BACK = 1  # a step failed; undone, the starting identity verified
    STUCK = 2  # a step failed and undoing did not reach the starting identity


@dataclass(frozen=True)
class SwitchResult:
    """How an in-process switch ended (the credentials are read lazily)."""

    status: SwitchStatus
    failed_step: Step | None
    expected: Expect | None  # what the failing step had to leave
    ret: int
    errno: int
    _lib: Any
    _raw: Any

    @property
    def start(self) -> Creds:
        return _creds(self._lib, self._raw.start)

    @property
    def after(self) -> Creds:
        """Read right after the failing step (or the last step)."""
        return _creds(self._lib, self._raw.after)

    @property
    def now(self) -> Creds:
        """What the thread holds now."""
        return _creds(self._lib, self._raw.now)


class SwitchPlan:
    """Steps with their expectations and the undo steps, converted to C once.

    ``run()`` performs them in the calling process with every signal blocked
    (``up_switch`` in csrc/steps.c): no Python code, and so no exception
    raised by a signal handler, can run between two steps.
    """

    __slots__ = ("_c", "_expects", "_lib", "_steps", "_undo")

    def __init__(
        self,
        steps: Sequence[tuple[Step, Expect]],
        undo: Sequence[Step],
        module: Any = None,
    ) -> None:
        if len(steps) > MAX_STEPS or len(undo) > MAX_STEPS:
            raise ValueError(f"at most {MAX_STEPS} steps in a switch")
        ffi, lib = _load(module)
        self._lib = lib
        self._steps = tuple(s for s, _ in steps)
        self._expects = tuple(e for _, e in steps)
        self._undo = tuple(undo)
        pool: list[int] = []
        c_steps = ffi.new("struct up_step[]", max(1, len(steps)))
        c_expect = ffi.new("struct up_expect[]", max(1, len(steps)))
        for c, (step, _) in zip(c_steps, steps):
            _fill_switch_step(lib, c, step, pool)
        for c, exp in zip(c_expect, self._expects):
            _fill_expect(lib, c, exp, pool)
        c_undo = ffi.new("struct up_step[]", max(1, len(undo)))
        for c, step in zip(c_undo, undo):
            _fill_switch_step(lib, c, step, pool)
        c_pool = ffi.new("long long[]", pool or [0])
        c_res = ffi.new("struct up_switch_result *")
        self._c = (c_steps, c_expect, len(steps), c_undo, len(undo), c_pool, len(pool), c_res)

    @property
    def steps(self) -> tuple[Step, ...]:
        return self._steps

    def run(self) -> SwitchResult:
        steps, expect, n, undo, nundo, pool, npool, res = self._c
        status = self._lib.up_switch(steps, expect, n, undo, nundo, pool, npool, res)
        if status == self._lib.UP_SWITCH_BAD_INPUT:
            raise ValueError("up_switch refused its input")
        failed = res.failed_step
        return SwitchResult(
            status=SwitchStatus(status),
            failed_step=self._steps[failed] if failed >= 0 else None,
            expected=self._expects[failed] if failed >= 0 else None,
            ret=int(res.ret),
            errno=int(res.err),
            _lib=self._lib,
            _raw=res,
        )


def _fill_switch_step(lib: Any, c: Any, step: Step, pool: list[int]) -> None:
    c.op = int(step.op)
    if step.op is Op.SETGROUPS:
        # In-process switches may set more groups than a step holds: the
        # list goes to the pool and the step points at it.
        c.nargs = lib.UP_GROUPS_FROM_POOL
        c.args[0] = len(pool)
        c.args[1] = len(step.args)
        pool.extend(step.args)
        return
    c.nargs = len(step.args)
    for i, a in enumerate(step.args):
        c.args[i] = a


def _fill_expect(lib: Any, c: Any, exp: Expect, pool: list[int]) -> None:
    any_ = lib.UP_ANY
    for i in range(3):
        c.uid[i] = any_ if exp.uids is None or exp.uids[i] is None else exp.uids[i]
        c.gid[i] = any_ if exp.gids is None or exp.gids[i] is None else exp.gids[i]
    c.fsuid = any_ if exp.fsuid is None else exp.fsuid
    c.fsgid = any_ if exp.fsgid is None else exp.fsgid
    if exp.groups is None:
        c.groups_off, c.groups_count = 0, -1
    else:
        c.groups_off, c.groups_count = len(pool), len(exp.groups)
        pool.extend(exp.groups)
