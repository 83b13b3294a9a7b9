"""Turning a trace into a verdict.

A verdict is True only when every planned call ran in the child and every id
read back after it is what the scenario requires.  It is False when the
platform itself misbehaved: a checked call did the wrong thing while the
start state was established.  It is None (undetermined) when this process
could not test: no privilege, unmapped ids, a refused start state, a child
that crashed or hung, or one disturbed from outside (``Result.disturbed``:
another process stopped or killed it).  "Broken" and "could not test" are
never confused, nor "could not test" and "was disturbed".
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass
from typing import NamedTuple

from uidprobe.engine import Outcome, Record, Step
from uidprobe.ids import IdPattern, IdTriple
from uidprobe.plan import Plan, PlannedStep
from uidprobe.probes import Role

__all__ = ["Kind", "Result", "TraceLine", "evaluate", "not_run"]


class Kind(str, enum.Enum):
    """Where a verdict comes from."""

    OBSERVED = "observed"  # a child made the calls and read the ids back
    DECLARED = "declared"  # what sysconf says, not a test


class TraceLine(NamedTuple):
    """One call of a probe: what was required (the planned step) and what
    the child saw."""

    planned: PlannedStep
    record: Record | None  # None: the child never reported this step
    mismatch: str | None  # why the observation broke the requirement

    @property
    def step(self) -> Step:
        return self.planned.step

    @property
    def role(self) -> Role:
        return self.planned.role

    @property
    def expect_ok(self) -> bool:
        return self.planned.ok

    @property
    def expect_uids(self) -> IdPattern | None:
        return self.planned.uids

    @property
    def expect_gids(self) -> IdPattern | None:
        return self.planned.gids

    @property
    def expect_groups(self) -> tuple[int, ...] | None:
        return self.planned.groups

    @property
    def expect_sibling_uids(self) -> IdPattern | None:
        """What the child's second thread had to read back (THREAD_CREDENTIALS)."""
        return self.planned.sibling_uids

    @property
    def expect_sibling_gids(self) -> IdPattern | None:
        return self.planned.sibling_gids

    @property
    def expect_sibling_groups(self) -> tuple[int, ...] | None:
        return self.planned.sibling_groups

    def describe(self) -> str:
        """``after seteuid(2): should be real 1 / effective 2 / saved 0, is ...``."""
        parts = []
        for label, exp, got in (
            ("uid", self.expect_uids, self.record and self.record.uids),
            ("gid", self.expect_gids, self.record and self.record.gids),
        ):
            if exp is not None:
                parts.append(f"{label} should be {_fmt(exp, 'any')}" + (f", is {_fmt(got)}" if got else ""))
        if self.expect_groups is not None:
            got_groups = self.record.groups if self.record else None
            parts.append(
                f"groups should be {list(self.expect_groups)}"
                + (f", are {list(got_groups)}" if got_groups is not None else "")
            )
        parts += self._describe_sibling()
        result = "not reached" if self.record is None else self.record.describe_result()
        want = "must succeed" if self.expect_ok else "must fail"
        verdict = f"  <-- {self.mismatch}" if self.mismatch else ""
        return f"{self.step} [{self.role.value}, {want}]: {result}; " + "; ".join(parts) + verdict

    def _describe_sibling(self) -> list[str]:
        r = self.record
        parts = []
        for label, exp, got in (
            ("uid", self.expect_sibling_uids, r and r.sibling_uids),
            ("gid", self.expect_sibling_gids, r and r.sibling_gids),
        ):
            if exp is not None:
                parts.append(
                    f"other thread's {label} should be {_fmt(exp, 'any')}" + (f", is {_fmt(got)}" if got else "")
                )
        if self.expect_sibling_groups is not None:
            got_groups = r.sibling_groups if r else None
            parts.append(
                f"other thread's groups should be {list(self.expect_sibling_groups)}"
                + (f", are {list(got_groups)}" if got_groups is not None else "")
            )
        return parts


@dataclass(frozen=True)
class Result:
    """The verdict of one probe.

    ``verdict`` is True (the mechanism works here), False (it does not), or
    None (undetermined: this process could not test; see ``reason``).
    ``value`` is what a C program would ``#define``: 1 only for True.
    """

    name: str
    verdict: bool | None
    reason: str
    trace: tuple[TraceLine, ...] = ()
    meaning: str = ""
    kind: Kind = Kind.OBSERVED
    #: undetermined because the child was disturbed from outside (see
    #: ``Outcome.disturbed``), not because this process could not test:
    #: ``uidprobe configure`` never persists such a verdict
    disturbed: bool = False

    @property
    def value(self) -> int:
        return 1 if self.verdict is True else 0

    @property
    def verdict_word(self) -> str:
        return {True: "yes", False: "no", None: "undetermined"}[self.verdict]


def _fmt(t: IdPattern | IdTriple, unknown: str = "?") -> str:
    names = ("real", "effective", "saved")
    return " / ".join(f"{n} {unknown if v is None else v}" for n, v in zip(names, t))


def _compare(what: str, expected: IdPattern | None, got: IdTriple) -> tuple[str | None, bool]:
    """(mismatch, inferred): inferred is True when saved could not be read."""
    if expected is None or expected == got:
        return None, False  # equal as tuples: no mismatch, nothing unread that was asked for
    inferred = False
    for name, e, g in zip(("real", "effective", "saved"), expected, got):
        if e is None:
            continue
        if g is None:
            inferred = True  # no getresuid: the later calls' behaviour decides
            continue
        if e != g:
            return f"{name} {what} is {g}, should be {e}", inferred
    return None, inferred


def _mismatch(p: PlannedStep, r: Record) -> tuple[str | None, bool]:
    if p.ok and not r.ok:
        return f"{p.step} {r.describe_result()}", False
    if not p.ok and r.ok:
        return f"{p.step} succeeded but must fail", False
    if (
        (p.uids is None or p.uids == r.uids)
        and (p.gids is None or p.gids == r.gids)
        and (p.fsuid is None or p.fsuid == r.fsuid)
        and (p.fsgid is None or p.fsgid == r.fsgid)
        and p.groups is None
        and p.sibling_uids is None
        and p.sibling_gids is None
        and p.sibling_groups is None
    ):
        return None, False  # every expectation met exactly (the usual case): no field-by-field walk
    m, inferred_u = _compare("uid", p.uids, r.uids)
    if m:
        return f"after {p.step}: {m}", inferred_u
    m, inferred_g = _compare("gid", p.gids, r.gids)
    if m:
        return f"after {p.step}: {m}", inferred_g
    for label, want, got in (("fsuid", p.fsuid, r.fsuid), ("fsgid", p.fsgid, r.fsgid)):
        if want is not None and got is not None and want != got:
            return f"after {p.step}: {label} is {got}, should be {want} (the effective id's)", False
    if p.groups is not None and (r.groups is None or sorted(r.groups) != sorted(p.groups)):
        return f"after {p.step}: groups are {r.groups}, should be {list(p.groups)}", False
    m = _sibling_mismatch(p, r)
    if m:
        return f"after {p.step}: {m}", False
    return None, inferred_u or inferred_g


def _sibling_mismatch(p: PlannedStep, r: Record) -> str | None:
    """Why the second thread's read-back breaks the plan, or None."""
    if p.sibling_uids is None and p.sibling_gids is None and p.sibling_groups is None:
        return None
    if r.sibling_uids is None or r.sibling_gids is None:
        return "the second thread was not read back"
    for what, want, got in (("uid", p.sibling_uids, r.sibling_uids), ("gid", p.sibling_gids, r.sibling_gids)):
        m, _ = _compare(what, want, got)
        if m:
            return f"in the other thread, {m}"
    if p.sibling_groups is not None and (
        r.sibling_groups is None or sorted(r.sibling_groups) != sorted(p.sibling_groups)
    ):
        return f"in the other thread, groups are {r.sibling_groups}, should be {list(p.sibling_groups)}"
    return None


def _privileged_refusal(p: PlannedStep, r: Record, before: Record | None) -> bool:
    """A call refused with EPERM while the child had euid 0 (and so the
    capabilities set*id needs): no set*id semantics say that, a security
    policy (seccomp, an LSM) does.  That is "cannot test", not "broken"."""
    return p.ok and r.ret == -1 and r.errno == errno.EPERM and before is not None and before.uids[1] == 0


def not_run(name: str, meaning: str, verdict: bool | None, reason: str) -> Result:
    """A result decided before (or instead of) running a child."""
    return Result(name=name, verdict=verdict, reason=reason, meaning=meaning)


def evaluate(plan: Plan, outcome: Outcome) -> Result:
    """The verdict for ``plan`` from the child's ``outcome``."""
    probe = plan.probe
    lines: list[TraceLine] = []
    decided: tuple[bool | None, str] | None = None
    inferred = False
    before: Record | None = None
    for i, p in enumerate(plan.steps):
        r = outcome.records[i] if i < len(outcome.records) else None
        mismatch = None
        emulated = r.emulation() if r is not None and decided is None else None
        if emulated is not None:
            # Neither answer can be believed: the C library's calls are
            # answered by an emulation, whatever the kernel does.
            decided = (None, f"cannot test here: after {p.step}, {emulated}")
        if r is not None and decided is None:
            mismatch, inf = _mismatch(p, r)
            inferred = inferred or inf
            if mismatch and p.role is Role.SETUP:
                decided = (None, f"could not establish the start state: {mismatch}")
            elif mismatch and p.role is Role.AUX:
                decided = (None, f"could not drop or regain the effective uid around the check: {mismatch}")
            elif mismatch and _privileged_refusal(p, r, before):
                decided = (None, f"refused while privileged, so a security policy blocks it: {mismatch}")
            elif mismatch:
                decided = (False, mismatch)
        lines.append(TraceLine(p, r, mismatch))
        before = r
    trace = tuple(lines)
    disturbed = False
    if decided is None and not outcome.completed:
        # Nothing an outside signal does can change an id: a mismatch seen
        # before it stands; only what was never reached is unknown.
        disturbed = outcome.disturbed is not None
        decided = (None, outcome.describe_end())
    if decided is None:
        reason = f"every call behaved as required: {probe.meaning}"
        if inferred:
            reason += " (saved ids not readable here: inferred from which calls succeeded)"
        decided = (True, reason)
    return Result(
        name=probe.name,
        verdict=decided[0],
        reason=decided[1],
        trace=trace,
        meaning=probe.meaning,
        disturbed=disturbed,
    )
