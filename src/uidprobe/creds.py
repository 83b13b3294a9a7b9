"""The calling thread's credentials, and the verified in-process switch.

Both read back from the kernel (raw system calls in csrc/steps.c), not from
the C library, so an emulation such as fakeroot cannot fake the answer, and
neither needs /proc.  ``SwitchPlan.run`` is one call into ``up_switch``: the
steps are made with every signal blocked, each is verified, and the first
mismatch is undone before control returns to Python.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from uidprobe.engine import MAX_STEPS, Engine, Step, default_engine, triple_from_c
from uidprobe.ids import IdPattern, IdTriple

__all__ = ["CapSets", "Caps", "Creds", "Expect", "SwitchPlan", "SwitchResult", "SwitchStatus", "read_creds"]


class CapSets(NamedTuple):
    """The four capability sets of a thread, as bit masks (bit n: capability n)."""

    effective: int
    permitted: int
    inheritable: int
    ambient: int


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
    def holds_privilege(self) -> bool:
        """Could bring privilege back: a capability in the permitted, effective
        or ambient set, or keepcaps on."""
        return bool(self.effective or self.permitted or self.ambient or self.keepcaps)

    @property
    def sets(self) -> CapSets:
        return CapSets(self.effective, self.permitted, self.inheritable, self.ambient)

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

    uids: IdTriple
    gids: IdTriple
    libc_uids: IdTriple
    libc_gids: IdTriple
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
        uids=triple_from_c(c.uid, unknown),
        gids=triple_from_c(c.gid, unknown),
        libc_uids=triple_from_c(c.libc_uid, unknown),
        libc_gids=triple_from_c(c.libc_gid, unknown),
        fsuid=None if c.fsuid == unknown else int(c.fsuid),
        fsgid=None if c.fsgid == unknown else int(c.fsgid),
        groups=groups,
        caps=caps,
    )


def read_creds(*, caps: bool = False, engine: Engine | None = None) -> Creds:
    """The calling thread's credentials, from the kernel (``caps``: also the
    capability sets, keepcaps and securebits)."""
    eng = engine or default_engine()
    c = eng.ffi.new("struct up_creds *")
    eng.lib.up_read_creds(c, eng.lib.UP_READ_CAPS if caps else 0)
    return _creds(eng.lib, c)


@dataclass(frozen=True)
class Expect:
    """What must hold after one step of an in-process switch (None: not checked)."""

    uids: IdPattern | None = None
    gids: IdPattern | None = None
    fsuid: int | None = None
    fsgid: int | None = None
    groups: tuple[int, ...] | None = None  # as a set
    caps: CapSets | None = None  # all four sets, exactly


class SwitchStatus(enum.IntEnum):
    """``UP_SWITCH_*`` in csrc/engine.h."""

    OK = 0  # every step ran and verified
    ROLLED_BACK = 1  # a step failed; undone, the starting identity verified
    STUCK = 2  # a step failed and undoing did not reach the starting identity
    NOT_AT_START = 4  # the thread did not hold the plan's starting identity: nothing was done


@dataclass(frozen=True)
class SwitchResult:
    """How an in-process switch ended (the credentials are converted lazily;
    their ``caps``, where read, carry the four sets only: keepcaps and
    securebits are not read during a switch)."""

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
        """What the thread holds now.  After OK only what the last step
        checked was read (the rest is unknown: None, or no groups/caps)."""
        return _creds(self._lib, self._raw.now)


class SwitchPlan:
    """Steps with their expectations and the undo steps, converted to C once.

    ``run()`` performs them in the calling thread with every signal blocked
    (``up_switch`` in csrc/steps.c): no Python code, and so no exception
    raised by a signal handler, can run between two steps.  ``start``, if
    given, is the identity the thread must hold for the plan to apply: when
    it does not, nothing is done and the status is NOT_AT_START (so a plan
    can be cached and reused without reading the identity first).

    ``attempt()`` is the fast path: the raw status only; ``result()`` then
    converts the details of that run.  A plan holds one result buffer: it is
    not for concurrent use by several threads.
    """

    __slots__ = ("_c", "_call", "_expects", "_lib", "_steps", "_undo")

    def __init__(
        self,
        steps: Sequence[tuple[Step, Expect]],
        undo: Sequence[Step],
        engine: Engine | None = None,
        start: Expect | None = None,
    ) -> None:
        if len(steps) > MAX_STEPS or len(undo) > MAX_STEPS:
            raise ValueError(f"at most {MAX_STEPS} steps in a switch")
        eng = engine or default_engine()
        ffi, lib = eng.ffi, eng.lib
        self._lib = lib
        self._call = lib.up_switch
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
        c_start = ffi.NULL
        if start is not None:
            c_start = ffi.new("struct up_expect *")
            _fill_expect(lib, c_start, start, pool)
        c_pool = ffi.new("long long[]", pool or [0])
        c_res = ffi.new("struct up_switch_result *")
        c_res.status = _NOT_RUN
        self._c = (c_steps, c_expect, len(steps), c_undo, len(undo), c_pool, len(pool), c_start, c_res)

    @property
    def steps(self) -> tuple[Step, ...]:
        return self._steps

    @property
    def succeeded(self) -> bool:
        """Did the last run (since ``forget``) end with every step verified?

        The C call writes this itself, so it is true the moment the switch is
        done, even if Python is interrupted before it can note it anywhere.
        """
        return bool(self._c[-1].status == 0)

    def forget(self) -> None:
        """Mark the plan as not run (``succeeded`` is then False)."""
        self._c[-1].status = _NOT_RUN

    def attempt(self) -> int:
        """Run the switch; the raw ``UP_SWITCH_*`` status (0: every step ran
        and verified).  Nothing is converted to Python: see ``result()``."""
        status: int = self._call(*self._c)
        return status

    def result(self, status: int) -> SwitchResult:
        """The details of the last ``attempt()``, which returned ``status``."""
        if status == self._lib.UP_SWITCH_BAD_INPUT:
            raise ValueError("up_switch refused its input")
        res = self._c[-1]
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

    def run(self) -> SwitchResult:
        return self.result(self.attempt())


_NOT_RUN = -1  # no UP_SWITCH_* status: the plan has not run since it was made or forgotten


def _fill_switch_step(lib: Any, c: Any, step: Step, pool: list[int]) -> None:
    c.op = int(step.op)
    if step.op.family == "groups":
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
    if exp.caps is not None:
        c.caps_check = 1
        c.cap_eff, c.cap_prm, c.cap_inh, c.cap_amb = exp.caps
