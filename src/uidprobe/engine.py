"""Typed face of the C engine (``uidprobe._engine``).

The engine forks a child per step list; the child performs the steps and
reads every id back, the parent collects that trace.  This module only moves
data between Python and C: it knows nothing about what a trace means (that
is ``verdicts``) or which steps to run (``probes`` and ``plan``).

One ``Engine`` object owns the loaded library and what was learned about it
(the runner program beside it, the calls the build found, the calls seen to
work at run time).  ``default_engine()`` loads the installed one on first
use, never at import, so that reading a persisted verdict
(``uidprobe.config``) loads no C extension and forks nothing.  Tests build
an Engine from another build of the C (one without getresuid) or without a
runner.
"""

from __future__ import annotations

import enum
import errno as errno_mod
import os
import signal
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

from uidprobe.errors import EngineError
from uidprobe.ids import IdTriple
from uidprobe.names import DEFAULT_TIMEOUT

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_ARGS",
    "MAX_STEPS",
    "MAX_SWITCH_GROUPS",
    "Engine",
    "EngineError",
    "Features",
    "Op",
    "Outcome",
    "Record",
    "Step",
    "Transport",
    "default_engine",
    "emulation_reason",
    "triple_from_c",
]

#: Limits fixed by csrc/engine.h (checked against the compiled module in tests).
MAX_ARGS = 8
MAX_STEPS = 64
#: The most supplementary groups an in-process switch sets and verifies.
MAX_SWITCH_GROUPS = 4096

CallFamily = Literal["uid", "gid", "groups", "caps", "thread"]


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
    # Per-thread (Linux): the raw system calls change the calling thread only.
    THREAD_START = 14  # probe children only: a sibling thread, read back after every step
    THREAD_SETRESUID = 15
    THREAD_SETRESGID = 16
    THREAD_SETGROUPS = 17
    # The in-process switch's capability steps (Linux; the calling thread only).
    CAPS_SET = 18  # capset: args (eff lo, eff hi, prm lo, prm hi, inh lo, inh hi)
    AMBIENT_RAISE = 19  # PR_CAP_AMBIENT_RAISE for each capability in args (lo, hi)

    @property
    def call(self) -> str:
        """The C function's name, e.g. ``"seteuid"``."""
        return _CALL_NAMES.get(self, self.name.lower())

    @property
    def family(self) -> CallFamily:
        """What the call changes."""
        if self in (Op.SETGROUPS, Op.THREAD_SETGROUPS):
            return "groups"
        if self is Op.THREAD_START:
            return "thread"
        if Op.CAPS_RAISE.value <= self.value <= Op.AMBIENT_CLEAR.value or self in (Op.CAPS_SET, Op.AMBIENT_RAISE):
            return "caps"
        return "uid" if self.name.endswith("UID") else "gid"

    @property
    def per_thread(self) -> bool:
        """A raw system call that changes the calling thread only."""
        return self in (Op.THREAD_SETRESUID, Op.THREAD_SETRESGID, Op.THREAD_SETGROUPS)


_CALL_NAMES = {
    Op.CAPS_RAISE: "capset-raise",
    Op.CAPS_CLEAR: "capset-clear",
    Op.KEEPCAPS: "prctl-keepcaps",
    Op.AMBIENT_CLEAR: "prctl-ambient-clear",
    Op.THREAD_START: "clone-thread",
    Op.THREAD_SETRESUID: "SYS_setresuid",
    Op.THREAD_SETRESGID: "SYS_setresgid",
    Op.THREAD_SETGROUPS: "SYS_setgroups",
    Op.CAPS_SET: "capset",
    Op.AMBIENT_RAISE: "prctl-ambient-raise",
}

_SHOWN = {
    Op.CAPS_RAISE: "capset(effective = permitted)",
    Op.CAPS_CLEAR: "capset(every set empty)",
    Op.AMBIENT_CLEAR: "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
    Op.THREAD_START: "clone(CLONE_THREAD): start a second thread",
}


class Transport(str, enum.Enum):
    """How probe children are started."""

    #: spawn the runner where it is installed and usable, else fork
    AUTO = "auto"
    #: fork from the small runner program (cost independent of the caller's size)
    SPAWN = "spawn"
    #: fork from this process
    FORK = "fork"


@dataclass(frozen=True)
class Step:
    """One call: ``op(*args)``; for setgroups, ``args`` is the group list."""

    op: Op
    args: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.args) > MAX_ARGS and self.op.family != "groups":
            raise ValueError(f"{self.op.call}: at most {MAX_ARGS} arguments")
        for a in self.args:
            if not -1 <= a <= 0xFFFFFFFF:
                raise ValueError(f"{self.op.call}: id {a} out of range")

    def __str__(self) -> str:
        if self.op.family == "groups":
            shown = self.args if len(self.args) <= 8 else [*self.args[:3], "...", f"{len(self.args)} groups"]
            return f"{self.op.call}([{', '.join(map(str, shown))}])"
        if self.op is Op.KEEPCAPS:
            return f"prctl(PR_SET_KEEPCAPS, {self.args[0]})"
        if self.op in (Op.CAPS_SET, Op.AMBIENT_RAISE):
            sets = [self.args[i] | self.args[i + 1] << 32 for i in range(0, len(self.args) - 1, 2)]
            if self.op is Op.AMBIENT_RAISE:
                return f"prctl(PR_CAP_AMBIENT_RAISE, {sets[0]:#x})"
            named = zip(("effective", "permitted", "inheritable"), sets)
            return "capset(" + ", ".join(f"{n}={v:#x}" for n, v in named) + ")"
        if self.op in _SHOWN:
            return _SHOWN[self.op]
        return f"{self.op.call}({', '.join(map(str, self.args))})"


def emulation_reason(which: str, libc: object, kernel: object) -> str:
    """Why ids cannot be believed when the C library and the kernel disagree."""
    return f"the C library reports {which} {libc} but the kernel holds {kernel}: an emulated root such as fakeroot"


class Record(NamedTuple):
    """What the child saw after one step: the call's result and every id.

    ``uids`` and ``gids`` are as the C library reads them back; saved is
    ``None`` when it cannot (no getresuid).  ``kernel_uids`` and
    ``kernel_gids`` are the same as the kernel reports them by raw system
    call: an emulated C library (fakeroot) can fake the first pair but not
    these.  A named tuple: a suite run reads back dozens of these, and a
    tuple is built several times faster than a frozen dataclass.
    """

    step: Step
    ret: int
    errno: int
    uids: IdTriple
    gids: IdTriple
    groups: tuple[int, ...] | None  # None: too many to record, or getgroups failed
    kernel_uids: IdTriple | None = None  # None: not read (a record the model replays)
    kernel_gids: IdTriple | None = None
    fsuid: int | None = None
    fsgid: int | None = None
    cap_effective: int | None = None
    cap_permitted: int | None = None
    #: the probe child's second thread (Op.THREAD_START), read back in that
    #: thread from the kernel after this step; None: no second thread
    sibling_uids: IdTriple | None = None
    sibling_gids: IdTriple | None = None
    sibling_groups: tuple[int, ...] | None = None

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
        if self.uids == self.kernel_uids and self.gids == self.kernel_gids:
            return None  # the usual case, compared at C speed
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
    timed_out: bool = False
    exit_code: int | None = None
    signal: int | None = None
    status_known: bool = False
    error: str | None = None  # the child could not be started: "fork failed: EAGAIN (...)"
    #: the errno of ``error``
    error_errno: int | None = None
    #: the signal that stopped the child (the engine then killed it), or None
    stopped: int | None = None
    #: the child was continued from a stop (SIGCONT)
    continued: bool = False

    @property
    def disturbed(self) -> str | None:
        """How the child was disturbed from outside, or None.

        The engine only sends SIGKILL, at the deadline (``timed_out``), and
        the child blocks every other signal; so a child that did not finish
        and was stopped, continued, or killed by a SIGKILL it was not sent,
        met someone else: another process of a probe id (kill(2) lets it), a
        tracer, the OOM killer or a resource limit.  Its unfinished trace
        says nothing about the platform.  Nor does a child that could not
        start for want of a process or memory (EAGAIN, ENOMEM: a pids limit,
        RLIMIT_NPROC that other processes of the user fill): a passing
        condition of the moment, not a fact about the machine.
        """
        if self.error is not None:
            return self.error if self.error_errno in (errno_mod.EAGAIN, errno_mod.ENOMEM) else None
        if self.completed:
            return None
        if self.stopped is not None:
            return f"stopped by {_signal_name(self.stopped)}"
        if self.continued:
            return "stopped and continued (SIGCONT)"
        if self.signal == signal.SIGKILL and not self.timed_out:
            return "killed by SIGKILL, which uidprobe did not send"
        return None

    def describe_end(self) -> str:
        """A short phrase for a child that did not complete, for reasons."""
        if self.error is not None:
            return f"could not start a probe child: {self.error}"
        done = f"after {len(self.records)} step(s)"
        outside = self.disturbed
        if outside is not None:
            return f"probe child was disturbed from outside: {outside}, {done}"
        if self.timed_out:
            return f"probe child timed out {done} and was killed"
        if self.signal is not None:
            return f"probe child was killed by {_signal_name(self.signal)} {done}"
        if self.exit_code is not None:
            return f"probe child exited with status {self.exit_code} {done}"
        return f"probe child ended {done} without finishing (exit status unavailable)"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True)
class Features:
    """Optional C library calls: found when the engine was built, and (the
    ``*_works`` fields) seen to do what they report at run time."""

    getresuid: bool
    setresuid: bool
    getresgid: bool
    setresgid: bool
    #: setresuid/setresgid, where they exist, really set the ids they report
    #: success for (False makes setup use setreuid/setregid)
    setresuid_works: bool = True
    setresgid_works: bool = True
    #: the per-thread steps (Op.THREAD_*) were built: Linux, every
    #: architecture (the raw system calls and the C library's clone())
    thread_ops: bool = False
    #: the kernel read-back is made with the system call instruction itself
    #: (x86_64, aarch64, i386, s390x), so no preload can answer in the
    #: kernel's place; elsewhere it goes through syscall(), which one can
    raw_syscalls: bool = False

    def has(self, op: Op) -> bool:
        """Does this C library provide ``op`` (the calls that may be missing)?"""
        return {Op.SETRESUID: self.setresuid, Op.SETRESGID: self.setresgid}.get(op, True)

    def usable(self, op: Op) -> bool:
        """May ``op`` be used to set up a probe: present and truthful?"""
        if op is Op.SETRESUID:
            return self.setresuid and self.setresuid_works
        if op is Op.SETRESGID:
            return self.setresgid and self.setresgid_works
        return True


def triple_from_c(raw: Any, unknown: int) -> IdTriple:
    """An IdTriple from a C ``long long[3]`` (``unknown``: an unreadable saved id)."""
    saved = int(raw[2])
    return IdTriple(int(raw[0]), int(raw[1]), None if saved == unknown else saved)


#: struct codes for the C field types of struct up_record and up_outcome
_CODES = {"int": "i", "long long": "q", "unsigned long long": "Q"}
#: pointers (read, never followed) as unsigned integers of their size
_POINTER_CODES = {4: "I", 8: "Q"}


def _layout(ffi: Any, ctype: str) -> tuple[struct.Struct, dict[str, int]]:
    """A ``struct`` format for a C struct, laid out from cffi's own view of
    it (offsets, array lengths, padding), and where each field's first value
    sits in the flat tuple it packs and unpacks."""
    t = ffi.typeof(ctype)
    fmt, pos, at, n = "=", 0, {}, 0
    for name, field in t.fields:
        ftype, count = field.type, 1
        if ftype.kind == "array":
            ftype, count = ftype.item, ftype.length
        if field.offset > pos:
            fmt += f"{field.offset - pos}x"
        code = _POINTER_CODES[ffi.sizeof(ftype)] if ftype.kind == "pointer" else _CODES[ftype.cname]
        fmt += f"{count}{code}"
        at[name] = n
        n += count
        pos = field.offset + ffi.sizeof(field.type)
    fmt += f"{ffi.sizeof(t) - pos}x"
    packer = struct.Struct(fmt)
    if packer.size != ffi.sizeof(t):
        raise EngineError(errno_mod.EPROTO, f"cannot lay out {ctype}")
    return packer, at


class _RecordDecoder:
    """Turns the C engine's record array into Records.

    A record is one ``struct.unpack_from`` (see ``_layout``) instead of
    dozens of cffi attribute reads.  What a record says is a pure function of
    its bytes, and a suite run reads back the same few dozen records each
    time, so each distinct record is decoded once (bounded cache); only the
    Step it belongs to is attached per run.
    """

    def __init__(self, ffi: Any, lib: Any) -> None:
        self.struct, self.at = _layout(ffi, "struct up_record")
        self.size = self.struct.size
        self.outcome_struct, self.outcome_at = _layout(ffi, "struct up_outcome")
        self.unknown = int(lib.UP_ID_UNKNOWN)
        self.max_groups = int(lib.UP_MAX_GROUPS)
        self._decoded: dict[bytes, tuple[int, tuple[Any, ...]]] = {}
        self._outcomes: dict[tuple[int, bytes], tuple[Sequence[Step], Outcome]] = {}

    def outcome(self, steps: Sequence[Step], c_out: bytes, records: Any) -> Outcome:
        """The Outcome of a child that ended (no parent-side error) from the
        bytes of its ``struct up_outcome`` and of its records.

        The same step tuple (the same object: plans are cached) with the
        same bytes is the same Outcome, so a repeated run gets the object it got
        before (immutable) and ``verdicts`` can judge it once.
        """
        # Only a tuple (of frozen Steps) cannot change between runs; a list
        # may be changed in place, and is decoded afresh.
        key = (id(steps), c_out + records[:]) if type(steps) is tuple else None
        hit = self._outcomes.get(key) if key is not None else None
        if hit is not None and hit[0] is steps:  # the entry holds `steps`: its id cannot be reused
            return hit[1]
        v, at = self.outcome_struct.unpack(c_out), self.outcome_at
        decoded = tuple(self.records(records, v[at["nrecords"]], steps))
        made = Outcome(
            records=decoded,
            completed=bool(v[at["completed"]]) and len(decoded) == len(steps),
            timed_out=bool(v[at["timed_out"]]),
            exit_code=v[at["exit_code"]] if v[at["exited"]] else None,
            signal=v[at["signal"]] if v[at["signaled"]] else None,
            status_known=bool(v[at["exited"]] or v[at["signaled"]]),
            stopped=v[at["stopped"]] or None,
            continued=bool(v[at["continued"]]),
        )
        if key is not None:
            if len(self._outcomes) >= 256:  # a bound: other ids, other runs
                self._outcomes.clear()
            self._outcomes[key] = (steps, made)
        return made

    def _decode(self, raw: bytes) -> tuple[int, tuple[Any, ...]]:
        """(step index, the Record's fields after ``step``)."""
        at, unknown = self.at, self.unknown
        v = self.struct.unpack(raw)

        def triple(name: str) -> IdTriple:
            i = at[name]
            return IdTriple(v[i], v[i + 1], None if v[i + 2] == unknown else v[i + 2])

        def ids(name: str) -> int | None:
            return None if v[at[name]] == unknown else v[at[name]]

        def groups(count: str, items: str) -> tuple[int, ...] | None:
            n, i = v[at[count]], at[items]
            return v[i : i + n] if 0 <= n <= self.max_groups else None

        caps, sib = v[at["caps_known"]], v[at["sib_known"]]
        return v[at["index"]], (
            v[at["ret"]],
            v[at["err"]],
            triple("uid"),
            triple("gid"),
            groups("ngroups", "groups"),
            None if v[at["kuid"]] == unknown else triple("kuid"),
            None if v[at["kgid"]] == unknown else triple("kgid"),
            ids("fsuid"),
            ids("fsgid"),
            v[at["cap_eff"]] if caps else None,
            v[at["cap_prm"]] if caps else None,
            triple("sib_uid") if sib else None,
            triple("sib_gid") if sib else None,
            groups("sib_ngroups", "sib_groups") if sib else None,
        )

    def records(self, buf: Any, count: int, steps: Sequence[Step]) -> list[Record]:
        size, decoded, out = self.size, self._decoded, []
        for k in range(count):
            raw = buf[k * size : (k + 1) * size]
            hit = decoded.get(raw)
            if hit is None:
                if len(decoded) >= 1024:  # records vary only with the ids probed: a bound for safety
                    decoded.clear()
                hit = decoded[raw] = self._decode(raw)
            index, fields = hit
            if not 0 <= index < len(steps):
                break  # defensive: a record we did not ask for ends the trace
            out.append(Record(steps[index], *fields))
        return out


def _timeout_ms(timeout: float) -> int:
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, not {timeout!r}")
    return max(1, int(timeout * 1000))


_UNSET: Any = object()


class Engine:
    """The loaded C engine and what was learned about it.

    ``module`` is a cffi-built engine (default: the installed
    ``uidprobe._engine``); ``runner`` the runner program (default: the one
    installed beside the installed engine, if executable; ``None``: none, so
    every child is forked from this process).  ``fallback=False``: a batch
    that asks for AUTO goes through the runner or not at all, never forked
    from here instead (``uidprobe --runner PATH`` probes that runner's C
    library and no other).

    A runner serves exactly one batch (one per job) and ends with it: it is
    this process's child, dies with it, and holds this thread's credentials
    and sandbox as they are when the batch starts, so nothing privileged
    outlives the call and no runner answers for a context that changed.
    """

    def __init__(self, module: Any = None, runner: str | None = _UNSET, *, fallback: bool = True) -> None:
        self.fallback = fallback
        if module is None:
            from uidprobe import _engine

            module = _engine
            if runner is _UNSET:
                path = os.path.join(os.path.dirname(os.path.abspath(_engine.__file__)), "_runner")
                runner = path if os.access(path, os.X_OK) else None
        self.ffi: Any = module.ffi
        self.lib: Any = module.lib
        self.runner: str | None = None if runner is _UNSET else runner
        f = self.lib.up_features()
        lib = self.lib
        #: what the build found (compile-and-link tests)
        self.built = Features(
            getresuid=bool(f & lib.UP_HAVE_GETRESUID),
            setresuid=bool(f & lib.UP_HAVE_SETRESUID),
            getresgid=bool(f & lib.UP_HAVE_GETRESGID),
            setresgid=bool(f & lib.UP_HAVE_SETRESGID),
            thread_ops=bool(f & lib.UP_HAVE_THREAD_OPS),
            raw_syscalls=bool(f & lib.UP_HAVE_RAW_SYSCALLS),
        )
        self._learned: dict[tuple[int | None, int | None], Features] = {}
        self._decoder = _RecordDecoder(self.ffi, self.lib)
        self._step_struct, _ = _layout(self.ffi, "struct up_step")
        self._lock = threading.Lock()

    # ------------------------------------------------------ run-time features

    def learned_features(self, uid: int | None, gid: int | None) -> Features | None:
        """What a feature check with these ids found, if one ran."""
        return self._learned.get((uid, gid))

    def feature_check(self, uid: int | None, gid: int | None) -> list[Step]:
        """Steps for one child that tell which optional calls work here.

        ``setresuid(-1, -1, -1)`` changes nothing and is allowed to anyone,
        so ENOSYS from it means a stub (glibc's where the kernel lacks the
        call, or a sandbox).  With ``uid``/``gid`` (ordinary ids this
        privileged process can switch to) the child also sets them and the
        read-back shows whether a call that reports success really did it.
        """
        steps = [Step(Op.SETRESUID, (-1, -1, -1)), Step(Op.SETRESGID, (-1, -1, -1))]
        if gid is not None and self.built.setresgid:
            steps.append(Step(Op.SETRESGID, (gid, 0, 0)))
        if uid is not None and self.built.setresuid:
            steps.append(Step(Op.SETRESUID, (uid, 0, 0)))
        return steps

    def learn_features(self, uid: int | None, gid: int | None, out: Outcome) -> Features:
        """Judge a ``feature_check`` child and keep the answer for this Engine."""
        feats = self.built
        if out.completed:
            by_op: dict[Op, list[Record]] = {}
            for r in out.records:
                by_op.setdefault(r.step.op, []).append(r)

            def exists(op: Op) -> bool:
                return by_op[op][0].errno != errno_mod.ENOSYS

            def truthful(op: Op, target: int | None) -> bool:
                recs = by_op[op]
                if target is None or len(recs) < 2 or not recs[1].ok:
                    return True
                ids = recs[1].uids if op is Op.SETRESUID else recs[1].gids
                return ids.real == target and ids.effective == 0

            feats = replace(
                feats,
                setresuid=feats.setresuid and exists(Op.SETRESUID),
                setresgid=feats.setresgid and exists(Op.SETRESGID),
                setresuid_works=truthful(Op.SETRESUID, uid),
                setresgid_works=truthful(Op.SETRESGID, gid),
            )
        # A child that could not run (fork failed, crash) tells nothing:
        # keep what the build found, and ask again next time.
        if out.completed:
            with self._lock:
                self._learned[(uid, gid)] = feats
        return feats

    def features(self, uid: int | None = None, gid: int | None = None, timeout: float = DEFAULT_TIMEOUT) -> Features:
        """Run-time features (one child, the first time for these ids)."""
        known = self.learned_features(uid, gid)
        if known is not None:
            return known
        return self.learn_features(uid, gid, self.run(self.feature_check(uid, gid), timeout))

    # ------------------------------------------------------------ running

    def run(self, steps: Sequence[Step], timeout: float = DEFAULT_TIMEOUT, via: Transport | str = "auto") -> Outcome:
        """Run ``steps`` in one forked child and return its trace.

        The child is killed after ``timeout`` seconds.  Anything the child
        does (fail, crash, hang), or a child that could not be started, is
        reported in the Outcome.
        """
        return self.run_batch([steps], timeout, via)[0]

    def run_batch(
        self,
        scenarios: Sequence[Sequence[Step]],
        timeout: float = DEFAULT_TIMEOUT,
        via: Transport | str = Transport.AUTO,
        jobs: int = 1,
    ) -> list[Outcome]:
        """Run each step list in its own child, in one C call.

        ``via`` SPAWN forks the children from the small runner program (cost
        independent of this process's size), FORK from this process, AUTO
        spawns when the runner is usable and falls back to forking (e.g.
        after a permanent drop made the installation unreadable).  ``jobs``
        > 1 splits a spawned batch over that many runners working at once.
        """
        via = Transport(via)
        for s in scenarios:
            if len(s) > MAX_STEPS:
                raise ValueError(f"at most {MAX_STEPS} steps per child, got {len(s)}")
        timeout_ms = _timeout_ms(timeout)
        n = len(scenarios)
        if n == 0:
            return []
        ffi, lib = self.ffi, self.lib
        c_steps = ffi.from_buffer("struct up_step[]", self._pack_steps(scenarios))
        counts = ffi.new("int[]", [len(s) for s in scenarios])
        c_records = ffi.new("struct up_record[]", n * MAX_STEPS)
        c_outs = ffi.new("struct up_outcome[]", n)
        if via is Transport.AUTO and not self.fallback:
            via = Transport.SPAWN
        runner = self.runner if via is not Transport.FORK else None
        if via is Transport.SPAWN and runner is None:
            raise EngineError(errno_mod.ENOENT, "the runner program is not installed or not executable")
        if runner is not None:
            rc = self._spawn(runner.encode(), c_steps, counts, n, c_records, c_outs, timeout_ms, jobs)
            if rc == lib.UP_RUNNER_FOREIGN:
                raise EngineError(errno_mod.EPROTO, self.foreign_runner(runner))
            if rc != 0 and via is Transport.AUTO:
                runner = None  # fall back: fork from this process
        if runner is None:
            lib.up_run_batch(c_steps, counts, n, c_records, c_outs, timeout_ms)
        return [self._outcome(s, c_records + k * MAX_STEPS, c_outs + k) for k, s in enumerate(scenarios)]

    def _spawn(
        self, runner: bytes, c_steps: Any, counts: Any, n: int, c_records: Any, c_outs: Any, timeout_ms: int, jobs: int
    ) -> int:
        """up_spawn_batch over ``jobs`` contiguous slices at once; 0 if all ran.

        cffi releases the GIL around C calls, so threads give real
        parallelism; each slice writes only its own part of the results.
        """
        lib = self.lib
        jobs = max(1, min(jobs, n))
        if jobs == 1:
            return int(lib.up_spawn_batch(runner, c_steps, counts, n, c_records, c_outs, timeout_ms))
        bounds = [n * j // jobs for j in range(jobs + 1)]
        offsets = [0]
        for k in range(n):
            offsets.append(offsets[-1] + counts[k])
        codes = [0] * jobs

        def work(j: int) -> None:
            lo, hi = bounds[j], bounds[j + 1]
            codes[j] = lib.up_spawn_batch(
                runner, c_steps + offsets[lo], counts + lo, hi - lo, c_records + lo * MAX_STEPS, c_outs + lo, timeout_ms
            )

        threads = []
        for j in range(jobs):
            t = threading.Thread(target=work, args=(j,))
            try:
                t.start()
            except RuntimeError:  # no room for a thread (a pids limit counts them): this one does the slice
                work(j)
                continue
            threads.append(t)
        for t in threads:
            t.join()
        if lib.UP_RUNNER_FOREIGN in codes:
            return int(lib.UP_RUNNER_FOREIGN)
        return 0 if all(c == 0 for c in codes) else -1

    @property
    def wire_abi(self) -> str:
        """The wire format this engine speaks, as its runner announces it:
        ``uidprobe-wire/1 64 little header=16 step=72 record=352 outcome=56``
        (version, word size, byte order, every wire struct's size)."""
        buf = self.ffi.new("char[]", int(self.lib.UP_WIRE_ABI_MAX))
        self.lib.up_wire_abi(buf, len(buf))
        return str(self.ffi.string(buf).decode())

    def runner_wire(self, runner: str) -> str | None:
        """What the runner program ``runner`` announces (started with no
        request, it then exits), or None when it announces nothing."""
        ffi = self.ffi
        buf = ffi.new("char[]", int(self.lib.UP_WIRE_ABI_MAX))
        if self.lib.up_runner_abi(runner.encode(), buf, len(buf), 2000) != 0:
            return None
        return str(ffi.string(buf).decode(errors="replace"))

    def foreign_runner(self, runner: str) -> str:
        """One line naming both sides of a refused runner: what it announces
        (asked again) and what this engine speaks."""
        theirs = self.runner_wire(runner)
        return (
            f"runner {runner} speaks {'nothing' if theirs is None else repr(theirs)}, this engine "
            f"{self.wire_abi!r}: refused, nothing was run (a runner built for another architecture or ABI "
            "cannot serve this engine)"
        )

    def _pack_steps(self, scenarios: Sequence[Sequence[Step]]) -> bytearray:
        """Every scenario's steps, back to back, as C ``struct up_step``s."""
        packer = self._step_struct
        buf = bytearray(packer.size * max(1, sum(len(s) for s in scenarios)))
        pad = (0,) * MAX_ARGS
        i = 0
        for s in scenarios:
            for step in s:
                args = step.args
                if len(args) > MAX_ARGS:
                    raise ValueError(f"{step.op.call}: at most {MAX_ARGS} arguments in a probe step")
                packer.pack_into(buf, i, int(step.op), len(args), *args, *pad[len(args) :])
                i += packer.size
        return buf

    def _outcome(self, steps: Sequence[Step], c_records: Any, c_out_ptr: Any) -> Outcome:
        ffi = self.ffi
        c_out = c_out_ptr[0]
        if c_out.error:
            # Fork or pipe failed (EAGAIN under a pids limit, ENOMEM): no
            # child, so no evidence.  An outcome, not an exception: the
            # verdict is undetermined with this reason.
            call = ffi.string(c_out.failed_call).decode() if c_out.failed_call else "fork"
            name = errno_mod.errorcode.get(c_out.error, str(c_out.error))
            return Outcome(
                records=(),
                completed=False,
                error=f"{call} failed: {name} ({os.strerror(c_out.error)})",
                error_errno=int(c_out.error),
            )
        n = max(0, min(int(c_out.nrecords), MAX_STEPS))
        return self._decoder.outcome(steps, ffi.buffer(c_out_ptr)[:], ffi.buffer(c_records, n * self._decoder.size))


_DEFAULT: list[Engine] = []  # at most one: the installed engine, once loaded
_DEFAULT_LOCK = threading.Lock()


def default_engine() -> Engine:
    """The installed engine, loaded on first use (thread-safe) and kept."""
    if not _DEFAULT:
        with _DEFAULT_LOCK:
            if not _DEFAULT:
                _DEFAULT.append(Engine())
    return _DEFAULT[0]
