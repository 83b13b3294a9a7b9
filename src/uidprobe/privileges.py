"""Switching identity with the mechanism the verdicts allow, verifying every step.

    from uidprobe.privileges import Switcher

    sw = Switcher()                    # mechanism chosen from uidprobe.config
    with sw.as_user("bill") as who:    # bill's uid, gid and groups (initgroups)
        append_to_bills_archive()      # who.groups: the groups that were set
    # root again here

    sw.drop_permanently("nobody")      # and checks root cannot come back

Targets (uidprobe.accounts): a user by name is its account, with its
primary gid and its groups from the group database; a uid by number needs
its gid and gets exactly the groups listed (none by default, as before
names were accepted).  ``groups=()`` asks for none, a list (gids or group
names) for exactly those.  Names are resolved before the first call, as
root, never inside the C switch or while switched; an unknown one raises
InvalidTargetError and nothing changes.

Mechanism, from the verdicts: setresuid/setresgid where HASSETRESUID and
HASSETRESGID hold; else setreuid/setregid where HASSETREUID and HASSETREGID
hold; else seteuid/setegid where USESETEUID and USESETEGID hold; else
NoMechanismError, naming the verdicts that forced it.  The uid and gid
families are chosen separately.

Order: leaving root, groups and gid change first (they need the privilege
the uid change gives up); coming back, the uid first, then gid and groups.

Verification (Tsafrir, Da Silva and Wagner: treat the system as
untrustworthy): every switch is one call into the C engine (``up_switch``)
that makes the calls with every signal blocked and, after each one, reads
back from the kernel (raw system calls, not the C library) the real,
effective and saved uid and gid, the filesystem uid and gid and the
supplementary groups.  On the first mismatch it runs the undo steps and
checks that the starting identity is back; Python then raises
VerificationError saying what is held.  Because no Python code runs between
two calls, an exception raised by a signal handler can only arrive before
or after a whole switch, and the Switcher records the identity to come back
to before the switch starts: ``restore()`` always knows the way back.

Capabilities: a switch to a user other than root leaves the thread no
capability in effect and no ambient capability, whatever the securebits.
The kernel empties the effective set when the effective uid leaves 0,
except under SECBIT_NO_SETUID_FIXUP, where it keeps every capability (and a
write "as the user" would bypass file permissions as root): there, and
wherever the starting sets are not what the kernel's fixup would give back
(an ambient set, an effective set below the permitted one), the same C call
lowers them with capset/prctl right after the uid call.  The permitted and
inheritable sets are kept for the way back, which restores exactly the
starting sets; every set is read back by capget and verified like the ids.
``Identity.caps`` reports them.  The other threads' sets are the kernel's
to move (capset changes one thread): see threads and scope below.

A permanent drop also leaves no capability behind: afterwards the permitted,
effective and ambient sets must be empty and keepcaps off.  If they are not
(``prctl(PR_SET_KEEPCAPS, 1)`` was set), they are cleared and
VerificationError says so.  Then a forked child tries every way back to root,
capset-then-setuid included, and any success raises.  Every other thread
must hold the same ids and groups and CAP_SETUID and CAP_SETGID in effect
before the drop (the C library makes its calls in every thread), or
PrivilegeError refuses it before anything changes.

Threads and scope: on Linux the kernel keeps credentials per thread, but the
C library's set*id wrappers (glibc's and musl's) change every thread of the
process.  So with ``Switcher()`` (``scope="process"``, the default) a switch
applies to all threads at once, another thread doing file I/O meanwhile does
it with the switched identity, and the cost grows with the thread count.
Only the calling thread is read back, and only its capability sets can be
moved, so before every process-scope switch each other thread is checked
in /proc (uidprobe.threads, whatever the securebits): one with other ids or
groups, without CAP_SETUID and CAP_SETGID in effect (glibc aborts the
process when one thread's call fails), or, for a switch to a user other
than root, with its effective set below its permitted set or an ambient
set, refuses the switch with PrivilegeError before anything changes.
Afterwards no other thread may hold an effective or ambient capability
(securebits are per thread, and /proc does not show them): the switch is
undone and PrivilegeError raised.  ``restore()`` may be called from another
thread where the kernel puts every thread's sets back itself (it then
verifies its own and checks the switching thread's); where the switch moved
the switching thread's sets by capset, only that thread can restore
(PrivilegeError, still switched) while it lives.

``Switcher(scope="thread")`` switches only the calling thread, with the raw
setresuid/setresgid/setgroups system calls (Samba's "thread credentials"),
and verifies by reading back the calling thread's ids.  It needs the
THREAD_CREDENTIALS verdict to be 1 (NoMechanismError naming it otherwise).
One Switcher may be shared by threads: each thread has its own switch.
While a thread is switched this way:

- other threads keep their own identity (root stays root there), so they
  may rely on it;
- nothing may call the C library's set*id functions (``os.setuid``,
  ``os.setresuid``, ``os.setgroups``, a process-scope Switcher, a library
  that drops privileges): the C library applies its change to every thread,
  overwriting the per-thread identities;
- work handed to another thread (a pool, an executor, asyncio) runs as that
  thread, not as the switched user; but a thread *started* from a switched
  thread, and a child process (``subprocess``, ``os.fork``) started from
  one, start with its switched identity (the kernel copies the creator's):
  start worker threads before switching;
- /proc/self/status describes the main thread only; open files stay usable
  by every thread, whoever opened them;
- ``drop_permanently`` is process-wide by nature and refuses to run from a
  thread-scoped Switcher: use ``Switcher()`` for it, after every thread
  has restored.

Cost: every switch plan is cached (a few per thread, keyed by the targets and
checked against the identity it starts from inside the C call), so a
verified ``as_user`` + restore is two calls into C.
"""

from __future__ import annotations

import errno as errno_mod
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Callable, Literal, Optional

from uidprobe import threads
from uidprobe.accounts import Group, User, listed, needs_lookup, resolve
from uidprobe.creds import Caps, CapSets, Creds, Expect, SwitchPlan, SwitchResult, SwitchStatus, read_creds
from uidprobe.engine import MAX_SWITCH_GROUPS, Engine, Op, Step, Transport, default_engine
from uidprobe.errors import InvalidTargetError, NoMechanismError, PrivilegeError, VerificationError
from uidprobe.ids import IdTriple

__all__ = [
    "Identity",
    "InvalidTargetError",
    "Mechanism",
    "NoMechanismError",
    "PrivilegeError",
    "Scope",
    "Switcher",
    "VerificationError",
    "choose_mechanism",
    "current_caps",
    "current_identity",
]


@dataclass(frozen=True)
class Identity:
    """Every credential a switch must get right, as read back from the kernel.

    ``caps`` is the calling thread's capability state (None off Linux).  While
    switched to a user other than root it shows what the thread may hold:
    empty effective and ambient sets, and the permitted and inheritable sets
    of the start, kept only so that ``restore`` can take the effective set
    back (keepcaps and securebits are never changed).
    """

    uids: IdTriple
    gids: IdTriple
    groups: tuple[int, ...]  # the supplementary groups, sorted, without duplicates
    fsuid: int | None  # None where the platform has no filesystem ids to read
    fsgid: int | None
    caps: Caps | None = None


def _identity(c: Creds) -> Identity:
    if c.groups is None:
        raise PrivilegeError(f"this process has more supplementary groups than uidprobe verifies ({MAX_SWITCH_GROUPS})")
    return Identity(uids=c.uids, gids=c.gids, groups=c.groups, fsuid=c.fsuid, fsgid=c.fsgid, caps=c.caps)


def current_identity(engine: Engine | None = None) -> Identity:
    """The calling thread's credentials, capabilities included, read back from the kernel now."""
    return _identity(read_creds(caps=True, engine=engine))


def current_caps(engine: Engine | None = None) -> Caps | None:
    """The calling thread's capability state (None off Linux)."""
    return read_creds(caps=True, engine=engine).caps


@dataclass(frozen=True)
class Mechanism:
    """The calls used for each id family: "setresuid", "setreuid" or "seteuid"
    for uids, and their gid twins."""

    uid: str
    gid: str


_UID_CHOICES = (("setresuid", "HASSETRESUID"), ("setreuid", "HASSETREUID"), ("seteuid", "USESETEUID"))
_GID_CHOICES = (("setresgid", "HASSETRESGID"), ("setregid", "HASSETREGID"), ("setegid", "USESETEGID"))


def choose_mechanism(values: Mapping[str, int | str | None]) -> Mechanism:
    """The best mechanism the verdicts allow; NoMechanismError if none."""
    picked = []
    for family, choices in (("uid", _UID_CHOICES), ("gid", _GID_CHOICES)):
        for call, name in choices:
            if values.get(name) == 1:
                picked.append(call)
                break
        else:
            why = ", ".join(f"{name}={values.get(name, 0)}" for _, name in choices)
            raise NoMechanismError(
                f"no {family} mechanism can switch and come back here: {why} (see 'uidprobe explain {choices[-1][1]}')"
            )
    return Mechanism(uid=picked[0], gid=picked[1])


# ------------------------------------------------------------ the mechanism table
#
# For each call family, three ways to move the ids of one family, each a list
# of (step, the triple it must leave) computed from the triple before it.
# A triple entry of None is not checked (the saved id after setreuid depends
# on the old real id in ways the final step pins down anyway).

_Opt = tuple[Optional[int], Optional[int], Optional[int]]
_Moves = list[tuple[Step, _Opt]]


def _setre_saved(real: int, new_real: int, new_eff: int, old_saved: int) -> int:
    """The saved id setreuid/setregid leaves (POSIX, and Linux's man page):
    the new effective id when the real id is set or the effective id becomes
    something other than the (old) real id, else unchanged."""
    if new_real != -1 or new_eff != real:
        return new_eff
    return old_saved


@dataclass(frozen=True)
class _Calls:
    """How one mechanism moves the ids of its family."""

    #: effective id ``target`` from ``now``, keeping a way back to its privilege
    temporary: Callable[[IdTriple, int], _Moves]
    #: from a temporary switch back to ``start``
    back: Callable[[IdTriple], _Moves]
    #: real, effective and saved ``target`` for good
    permanent: Callable[[int], _Moves]


#: Supplementary groups as a switch takes them: None (the default rule),
#: ``()`` (none) or a list of gids and group names.
_Groups = Optional[Iterable[Group]]

#: Which threads a switch changes: every thread, or only the calling one.
Scope = Literal["process", "thread"]
#: The per-thread mechanism: raw system calls, the calling thread only.
THREAD_MECHANISM = Mechanism(uid="SYS_setresuid", gid="SYS_setresgid")


def _res(op: Op) -> _Calls:
    return _Calls(
        temporary=lambda now, t: [(Step(op, (-1, t, -1)), (now[0], t, now[2]))],
        back=lambda start: [(Step(op, start.ints()), start)],
        permanent=lambda t: [(Step(op, (t, t, t)), (t, t, t))],
    )


def _seteuid_temporary(now: IdTriple, t: int) -> _Moves:
    if 0 not in (now[0], now[2]):
        raise NoMechanismError("seteuid cannot come back: neither the real nor the saved uid is 0")
    return [(Step(Op.SETEUID, (t,)), (now[0], t, now[2]))]


_MECHANISMS: dict[str, _Calls] = {
    "setresuid": _res(Op.SETRESUID),
    "setresgid": _res(Op.SETRESGID),
    "SYS_setresuid": _res(Op.THREAD_SETRESUID),
    "SYS_setresgid": _res(Op.THREAD_SETRESGID),
    # Real 0 is what lets setreuid(-1, 0) come back (sendmail's t_setreuid).
    "setreuid": _Calls(
        temporary=lambda now, t: [(Step(Op.SETREUID, (0, t)), (0, t, t))],
        back=lambda start: [
            (Step(Op.SETREUID, (-1, 0)), (None, 0, None)),
            (Step(Op.SETREUID, (start[0], start[1])), start),
        ],
        permanent=lambda t: [(Step(Op.SETREUID, (t, t)), (t, t, t))],
    ),
    "setregid": _Calls(
        temporary=lambda now, t: [
            (Step(Op.SETREGID, (-1, t)), (now[0], t, _setre_saved(now[0], -1, t, now.ints()[2])))
        ],
        back=lambda start: [(Step(Op.SETREGID, (start[0], start[1])), start)],
        permanent=lambda t: [(Step(Op.SETREGID, (t, t)), (t, t, t))],
    ),
    "seteuid": _Calls(
        temporary=_seteuid_temporary,
        back=lambda start: [(Step(Op.SETEUID, (start[1],)), start)],
        permanent=lambda t: [(Step(Op.SETUID, (t,)), (t, t, t))],
    ),
    "setegid": _Calls(
        temporary=lambda now, t: [(Step(Op.SETEGID, (t,)), (now[0], t, now[2]))],
        back=lambda start: [(Step(Op.SETEGID, (start[1],)), start)],
        permanent=lambda t: [(Step(Op.SETGID, (t,)), (t, t, t))],
    ),
}


class _Tracker:
    """Builds a switch plan while following the identity each step must leave.

    Every expectation is the whole identity at that point (uid and gid
    triples, filesystem ids, groups), so a call that changes something it
    should not is caught at once, not at the end.
    """

    def __init__(self, start: Identity, groups_op: Op = Op.SETGROUPS) -> None:
        self.groups_op = groups_op
        self.uids: _Opt = start.uids
        self.gids: _Opt = start.gids
        self.groups = start.groups
        self.fsuid = start.fsuid
        self.fsgid = start.fsgid
        self.start_caps = start.caps
        # The capability sets are checked from the step that pins them down
        # (a capset, or a uid step that must keep them): a capget saved on
        # every step before it.
        self.caps: CapSets | None = None
        self.steps: list[tuple[Step, Expect]] = []

    def _add(self, step: Step) -> None:
        self.steps.append(
            (
                step,
                Expect(
                    uids=self.uids,
                    gids=self.gids,
                    fsuid=self.fsuid,
                    fsgid=self.fsgid,
                    groups=self.groups,
                    caps=self.caps,
                ),
            )
        )

    def keep_caps(self) -> None:
        """The next steps must leave the starting capability sets as they are."""
        self.caps = self.start_caps.sets if self.start_caps is not None else None

    def lower_caps(self) -> None:
        """After the uid step: the effective and ambient sets must be empty,
        permitted and inheritable as they were (the way back raises the
        effective set from them).  Where the kernel's setuid fixup emptied
        the effective set (and there is no ambient set), the uid step's
        read-back checks that; otherwise capset and prctl empty them here.
        Every signal is blocked from the uid step to this one (one C call),
        so nothing runs in between with a user's uid and root's effective
        set."""
        c = self.start_caps
        if c is None:
            return  # no capabilities on this platform
        self.caps = CapSets(effective=0, permitted=c.permitted, inheritable=c.inheritable, ambient=0)
        if _fixup_moves_caps(c):
            step, exp = self.steps[-1]
            self.steps[-1] = (step, replace(exp, caps=self.caps))
            return
        if c.ambient:
            self._add(Step(Op.AMBIENT_CLEAR, ()))
        # capset changes no id (the uid step checked them all): the sets alone are read back.
        self.steps.append((Step(Op.CAPS_SET, _cap_args(0, c.permitted, c.inheritable)), Expect(caps=self.caps)))

    def groups_to(self, groups: tuple[int, ...]) -> None:
        self.groups = tuple(sorted(set(groups)))
        self._add(Step(self.groups_op, groups))

    def reached(self) -> Identity | None:
        """The identity every expectation so far pins down, if complete."""
        if None in self.uids or None in self.gids:
            return None
        r, e, s = self.uids
        gr, ge, gs = self.gids
        assert r is not None and e is not None and s is not None  # for mypy: checked above
        assert gr is not None and ge is not None and gs is not None
        caps = self.start_caps
        if caps is not None and self.caps is not None:
            caps = replace(caps, effective=self.caps.effective, ambient=self.caps.ambient)
        elif caps is not None:
            return None  # not pinned down: read back
        return Identity(
            uids=IdTriple(r, e, s),
            gids=IdTriple(gr, ge, gs),
            groups=self.groups,
            fsuid=self.fsuid,
            fsgid=self.fsgid,
            caps=caps,
        )

    def uid(self, moves: _Moves) -> None:
        for step, triple in moves:
            self.uids = triple
            # Every set*uid call sets the filesystem uid to the new effective uid.
            self.fsuid = None if self.fsuid is None else triple[1]
            self._add(step)

    def gid(self, moves: _Moves) -> None:
        for step, triple in moves:
            self.gids = triple
            self.fsgid = None if self.fsgid is None else triple[1]
            self._add(step)


#: securebits: the kernel leaves the capability sets alone when uids change.
_SECBIT_NO_SETUID_FIXUP = 1 << 2
#: securebits: no ambient capability may be raised.
_SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6


def _fixup_moves_caps(c: Caps) -> bool:
    """Does the kernel alone empty the effective set when the effective uid
    leaves 0, and make it the permitted set again on return, which is then
    the starting state (and there is no ambient set to put away)?  Else the
    switch does it with capset and prctl."""
    return not c.securebits & _SECBIT_NO_SETUID_FIXUP and c.effective == c.permitted and not c.ambient


def _check_ambient_comes_back(c: Caps | None) -> None:
    """A switch to a user puts the ambient set away; refuse it, before it
    starts, where restore() could not raise it again."""
    if c is not None and c.ambient and c.securebits & _SECBIT_NO_CAP_AMBIENT_RAISE:
        raise PrivilegeError(
            f"a switch puts the ambient capabilities ({c.ambient:#x}) away, and "
            "SECBIT_NO_CAP_AMBIENT_RAISE would stop restore() from raising them again"
        )


def _cap_args(effective: int, permitted: int, inheritable: int) -> tuple[int, ...]:
    """A capset step's arguments: each set as (low 32 bits, high 32 bits)."""
    return tuple(part for v in (effective, permitted, inheritable) for part in (v & 0xFFFFFFFF, v >> 32))


def _plan_back(mech: Mechanism, start: Identity, groups_op: Op = Op.SETGROUPS) -> list[tuple[Step, Expect]]:
    """The way back to ``start``: uid first, then the capability sets, gid
    and groups.

    Each step checks the family it sets, and the last one the whole starting
    identity, capability sets included.  So the same plan works from the
    switched identity, from a half-switched one and from the start itself
    (an interrupted ``restore`` can simply be run again).  The sets are put
    back by capset right after the uid where the kernel does not raise them
    itself (under SECBIT_NO_SETUID_FIXUP; setgroups needs CAP_SETGID);
    ambient capabilities are raised again only if the start had them.
    """
    steps: list[tuple[Step, Expect]] = []
    for step, triple in _MECHANISMS[mech.uid].back(start.uids):
        steps.append((step, Expect(uids=triple, fsuid=None if start.fsuid is None else triple[1])))
    if start.caps is not None and not _fixup_moves_caps(start.caps):
        c = start.caps
        steps.append((Step(Op.CAPS_SET, _cap_args(c.effective, c.permitted, c.inheritable)), Expect()))
        if c.ambient:
            steps.append((Step(Op.AMBIENT_RAISE, (c.ambient & 0xFFFFFFFF, c.ambient >> 32)), Expect()))
    for step, triple in _MECHANISMS[mech.gid].back(start.gids):
        steps.append((step, Expect(gids=triple, fsgid=None if start.fsgid is None else triple[1])))
    steps.append((Step(groups_op, start.groups), _whole(start)))
    return steps


def _whole(i: Identity) -> Expect:
    """Every credential of ``i``, as an expectation."""
    caps = i.caps.sets if i.caps is not None else None
    return Expect(uids=i.uids, gids=i.gids, fsuid=i.fsuid, fsgid=i.fsgid, groups=i.groups, caps=caps)


def _describe_failure(result: SwitchResult) -> str:
    """``after setresuid(-1, 1001, -1): saved uid is 1001, should be 0``."""
    step, exp = result.failed_step, result.expected
    if step is None or exp is None:
        return "the switch failed"
    if result.ret != 0:
        name = errno_mod.errorcode.get(result.errno, str(result.errno))
        return f"{step} failed: {name} ({os.strerror(result.errno)})"
    got = result.after
    for what, want, have in (("uid", exp.uids, got.uids), ("gid", exp.gids, got.gids)):
        for label, w, g in zip(("real", "effective", "saved"), want or (None, None, None), have):
            if w is not None and w != g:
                return f"after {step}: {label} {what} is {g}, should be {w} (read back {what}s {tuple(have)})"
    for fs_label, fs_want, fs_got in (("fsuid", exp.fsuid, got.fsuid), ("fsgid", exp.fsgid, got.fsgid)):
        if fs_want is not None and fs_want != fs_got:
            return f"after {step}: {fs_label} is {fs_got}, should be {fs_want}"
    groups = None if exp.groups is None else tuple(sorted(set(exp.groups)))
    if groups is not None and got.groups != groups:
        if got.groups is None or len(got.groups) + len(groups) > 16:  # a long list: what differs
            held = set(got.groups or ())
            missing, extra = sorted(set(groups) - held)[:8], sorted(held - set(groups))[:8]
            count = "more than uidprobe reads" if got.groups is None else len(got.groups)
            return f"after {step}: {count} groups, should be {len(groups)}; missing {missing}, unexpected {extra}"
        return f"after {step}: groups are {got.groups}, should be {groups}"
    if exp.caps is not None and (got.caps is None or got.caps.sets != exp.caps):
        sets = got.caps.sets if got.caps is not None else None
        return f"after {step}: capability sets are {_sets(sets)}, should be {_sets(exp.caps)}"
    return f"after {step}: the ids read back are not what they must be"


def _sets(s: CapSets | None) -> str:
    if s is None:
        return "unknown"
    return f"CapEff={s.effective:#x} CapPrm={s.permitted:#x} CapInh={s.inheritable:#x} CapAmb={s.ambient:#x}"


def _held(c: Creds) -> str:
    held = f"uids {tuple(c.uids)}, gids {tuple(c.gids)}, groups {c.groups}, fsuid {c.fsuid}, fsgid {c.fsgid}"
    return held if c.caps is None else f"{held}, {_sets(c.caps.sets)}"


def _signals_land_here() -> None:
    """A Python function call, made right after each switching C call.

    Signals that arrive during the call are blocked there and delivered as
    it returns; the interpreter runs their Python handlers at the next
    function entry.  Without a call here that would be wherever the caller's
    code next calls a function (for a short ``with`` body: entering
    ``__exit__``, the one place nothing can guard), so a handler that raises
    does so here, where the switch is recorded and the callers unwind it."""


class _Switch:
    """One temporary switch: the plans there and back, where it starts and
    the identity it reaches (None: read it back after the switch)."""

    __slots__ = ("back", "forward", "key", "owner", "reached", "start")

    def __init__(
        self,
        key: tuple[int, int, tuple[int, ...]],
        start: Identity,
        forward: SwitchPlan,
        back: SwitchPlan,
        reached: Identity | None,
    ) -> None:
        self.key = key  # the targets: uid, gid, groups
        self.start = start
        self.forward = forward
        self.back = back
        self.reached = reached
        self.owner = 0  # the native id of the thread that switched (set by _enter)


#: Plans kept per Switcher (and per thread, in thread scope).
_CACHED_PLANS = 8


class _State:
    """What a Switcher remembers: the active switch and the cached plans."""

    def __init__(self) -> None:
        self.active: _Switch | None = None
        self.plans: dict[tuple[int, int, tuple[int, ...]], _Switch] = {}


class _ThreadState(_State, threading.local):
    """The same, one per thread (scope="thread"): threading.local runs
    ``__init__`` again in each thread that first touches it."""


def _restore_if_active(cm: _AsUser) -> None:
    """Restore the switch ``cm`` made if it is still the active one; a few
    tries, each exception dropped (switched stays True when all fail).  An
    ``__init__`` cut short by a signal handler leaves no attributes."""
    for _ in range(4):
        try:
            switcher = getattr(cm, "_switcher", None)
            sw = getattr(cm, "_switch", None)
            if switcher is None or sw is None or switcher._state.active is not sw:
                return
            switcher.restore()
        except Exception:
            continue


class _AsUser:
    """What ``Switcher.as_user`` returns: a class rather than a generator, so
    that ``__enter__`` can undo the switch if an exception lands between the
    switch and the ``with`` block (a generator-based manager would leave it
    to the garbage collector)."""

    __slots__ = ("_switch", "_switcher")

    def __init__(self, switcher: Switcher, switch: _Switch) -> None:
        self._switcher = switcher
        self._switch = switch

    def __enter__(self) -> Identity:
        switcher = self._switcher
        try:
            reached = switcher._enter(self._switch)
            _signals_land_here()  # while this try still guards the switch
            return reached
        except BaseException:
            # Inline, not _unwind_attempts(): entering a function is where
            # the interpreter runs signal handlers, and a handler raising
            # there, before any try, would skip every attempt.
            try:
                switcher._unwind()
            finally:
                try:
                    switcher._unwind()
                finally:
                    switcher._unwind()
            raise

    def __exit__(self, *exc: object) -> None:
        self._switcher._unwind_attempts()

    def __del__(self) -> None:
        # The safety net for the one unguarded instant (see as_user).  Every
        # line is in a try: a signal handler raising here costs one attempt.
        try:
            _restore_if_active(self)
        finally:
            try:
                _restore_if_active(self)
            finally:
                _restore_if_active(self)


class Switcher:
    """Temporary and permanent identity switches for a root process.

    ``values`` are the config values to choose the mechanism from (default:
    ``uidprobe.config``); ``engine`` the C engine (default: the installed
    one, loaded on first use).  One switch at a time: ``become`` then
    ``restore``.

    ``scope="process"`` (the default) switches every thread of the process
    (the C library's calls); ``scope="thread"`` only the calling thread (raw
    system calls; needs THREAD_CREDENTIALS=1), one switch at a time per
    thread.  See the module's documentation for what a program must not do
    meanwhile.
    """

    def __init__(
        self,
        values: Mapping[str, int | str | None] | None = None,
        *,
        engine: Engine | None = None,
        scope: Scope = "process",
    ) -> None:
        if values is None:
            from uidprobe import config

            values = config.VARS
        self.values = dict(values)
        if scope == "process":
            self.mechanism = choose_mechanism(self.values)
            self._state: _State | _ThreadState = _State()
        elif scope == "thread":
            if self.values.get("THREAD_CREDENTIALS") != 1:
                raise NoMechanismError(
                    "per-thread switching needs THREAD_CREDENTIALS=1, and it is "
                    f"{self.values.get('THREAD_CREDENTIALS', 0)} here (see 'uidprobe explain THREAD_CREDENTIALS')"
                )
            self.mechanism = THREAD_MECHANISM
            self._state = _ThreadState()
        else:
            raise ValueError(f"scope must be 'process' or 'thread', not {scope!r}")
        self.scope: Scope = scope
        self._groups_op = Op.THREAD_SETGROUPS if scope == "thread" else Op.SETGROUPS
        self._engine = engine

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = default_engine()
        return self._engine

    @property
    def switched(self) -> bool:
        """True from the moment a switch starts until ``restore`` verified the way back.

        Read from the way back's own C result, not only from Python's note:
        a signal handler that raises between the C call and the note cannot
        leave a restored identity looking switched.
        """
        sw = self._state.active
        return sw is not None and not sw.back.succeeded

    # ---------------------------------------------------------- temporary

    def _plan(self, user: User, group: Group | None, groups: _Groups, cached: bool = True) -> _Switch:
        """Resolve and check the targets and build both plans, or take them
        from the cache; changes nothing.  A cached plan was made from an
        identity the C call checks before its first step (NOT_AT_START
        otherwise).  Names are looked up on every call (the databases may
        have changed), and never while switched."""
        if self.switched:
            raise PrivilegeError("already switched: restore() before switching again")
        uid, gid, wanted = resolve(user, group, groups)
        self._state.active = None  # a switch restored but not yet noted: noted now
        key = (uid, gid, wanted)
        known = self._state.plans.get(key) if cached else None
        if known is not None and uid != 0 and known.start.caps is not None and known.start.caps.ambient:
            # The C call checks the sets a cached plan starts from, not the
            # securebits; with an ambient set to put away they decide whether
            # restore() can raise it again (rare: read them now).
            _check_ambient_comes_back(current_caps(self.engine))
        if known is None:
            known = self._new_plan(uid, gid, wanted)
            self._keep(known)
        # A switch of its own (sharing the converted plans): whoever holds a
        # switch can tell it from a later one by identity (_AsUser.__del__).
        return _Switch(key, known.start, known.forward, known.back, known.reached)

    def _keep(self, sw: _Switch) -> None:
        plans = self._state.plans
        plans.pop(sw.key, None)
        plans[sw.key] = sw
        if len(plans) > _CACHED_PLANS:
            del plans[next(iter(plans))]  # the oldest

    def _new_plan(self, uid: int, gid: int, wanted: tuple[int, ...]) -> _Switch:
        if self.scope == "thread" and not self.engine.built.thread_ops:
            raise NoMechanismError("per-thread switching: this build of uidprobe's engine has no per-thread calls")
        start = current_identity(self.engine)
        if start.uids[1] != 0:
            raise PrivilegeError(f"becoming another user needs effective uid 0, not {start.uids[1]}")
        if uid != 0:
            _check_ambient_comes_back(start.caps)
        m = self.mechanism
        t = _Tracker(start, self._groups_op)
        t.groups_to(wanted)
        t.gid(_MECHANISMS[m.gid].temporary(start.gids, gid))
        if uid == 0:
            t.keep_caps()  # root stays root: the sets must not move
        t.uid(_MECHANISMS[m.uid].temporary(start.uids, uid))
        if uid != 0:
            t.lower_caps()
        back = _plan_back(m, start, self._groups_op)
        undo = [step for step, _ in back]
        forward = SwitchPlan(t.steps, undo, self.engine, start=_whole(start))
        # Coming back has nowhere better to retreat to than where it is: no undo.
        return _Switch((uid, gid, wanted), start, forward, SwitchPlan(back, [], self.engine), t.reached())

    def plan(self, user: User, group: Group | None = None, groups: _Groups = None) -> tuple[list[Step], list[Step]]:
        """The calls ``become(user, group, groups)`` would make, and those of
        the way back, from the identity held now (a dry run: nothing changes)."""
        sw = self._plan(user, group, groups, cached=False)
        return list(sw.forward.steps), list(sw.back.steps)

    def _replan(self, sw: _Switch) -> None:
        """The thread left the identity ``sw`` was planned from: plan again
        from the one it holds now, in place (``sw`` may be recorded as active)."""
        fresh = self._new_plan(*sw.key)
        self._keep(fresh)
        sw.start, sw.forward, sw.back, sw.reached = fresh.start, fresh.forward, fresh.back, fresh.reached

    def _enter(self, sw: _Switch) -> Identity:
        alone = True
        if self.scope == "process":
            alone = threads.alone()  # then no thread can appear before the switch: only this one could start it
            if not alone:
                self._check_other_threads(sw)
            sw.owner = threading.get_native_id()
        # Recorded before the first call: whatever interrupts after this
        # line, restore() knows where to go back to (and the way back is
        # marked not taken, so ``switched`` says True until it is).
        sw.back.forget()
        self._state.active = sw
        status = sw.forward.attempt()
        _signals_land_here()
        if status == SwitchStatus.NOT_AT_START or (status == SwitchStatus.ROLLED_BACK and self._securebits_changed(sw)):
            try:
                self._replan(sw)
            except BaseException:
                self._state.active = None  # nothing was switched
                raise
            status = sw.forward.attempt()
        if status != SwitchStatus.OK:
            result = sw.forward.result(status)
            if result.status is SwitchStatus.NOT_AT_START:
                self._state.active = None
                raise PrivilegeError(f"the identity changed while switching: holding {_held(result.now)}")
            why = _describe_failure(result)
            if result.status is SwitchStatus.ROLLED_BACK:
                self._state.active = None
                raise VerificationError(f"{why}; the starting identity was restored")
            raise VerificationError(f"{why}; and restoring failed too: holding {_held(result.now)}")
        if self._state.active is not sw:
            # restore() ran meanwhile (a signal handler, before the C call):
            # it found nothing to undo and forgot the switch, which then
            # happened.  Undo it now rather than leave an identity nobody knows.
            undo = sw.back.run()
            if undo.status is not SwitchStatus.OK:
                self._state.active = sw
                raise VerificationError(
                    f"restore() ran while switching, and undoing the switch failed: {_describe_failure(undo)}; "
                    f"holding {_held(undo.now)}"
                )
            raise PrivilegeError("restore() ran while switching (from a signal handler?): the switch was undone")
        others = not alone and sw.key[0] != 0 and threads.holding_after(sw.key[0])
        if others:
            self.restore()
            raise PrivilegeError(
                f"the switch was undone: as uid {sw.key[0]}, {others}. A switch can lower only its own "
                "thread's capabilities: use Switcher(scope='thread'), or switch before starting threads"
            )
        # Read back in full when the plan cannot say (switch results carry no securebits).
        return sw.reached or current_identity(self.engine)

    def _securebits_changed(self, sw: _Switch) -> bool:
        """After a switch was rolled back: were the securebits different
        when its plan was made?  (The C call checks the identity a cached
        plan starts from, but not the securebits, which decide what the
        kernel does to the capability sets: set NO_SETUID_FIXUP since, and
        the effective set a plan expected the kernel to empty stays.)"""
        then, now = sw.start.caps, current_caps(self.engine)
        return then is not None and now is not None and then.securebits != now.securebits

    def _check_other_threads(self, sw: _Switch) -> None:
        """Refuse a process-scope switch, before it starts, that some other
        thread would not follow (uidprobe.threads says why)."""
        problem = threads.problem_before(sw.key[0])
        if problem:
            raise PrivilegeError(
                f"the switch was refused before it started (nothing was changed): {problem}. A process-scope "
                "switch makes the C library change every thread's ids, but verifies, and moves the capability "
                "sets of, only the calling thread: use Switcher(scope='thread'), or switch before starting threads"
            )

    def become(self, user: User, group: Group | None = None, groups: _Groups = None) -> Identity:
        """Take ``user``/``group``/``groups`` as the effective identity,
        keeping the means to come back (``restore``).  Needs effective uid 0.

        ``become("bill")``: bill's uid, primary gid and groups (from the
        password and group databases, as ``initgroups``).  ``become(1001,
        1001)``: exactly those ids and no supplementary groups.  ``groups``
        overrides either: ``()`` for none, or a list of gids or group names.
        Every name is resolved before the first call; an unknown one raises
        InvalidTargetError and nothing changes.

        Returns the identity read back after the switch, with the groups
        that were set.  On failure the starting identity has been restored
        and verified before VerificationError is raised (or the error says
        what is held).
        """
        return self._enter(self._plan(user, group, groups))

    def restore(self) -> None:
        """Return to the identity ``become`` started from; uid first.

        Safe to call again after it raised, or after an interrupted switch:
        the way back works from the switched identity and from the start.
        If a step fails, the later ones are still tried (a gid and groups
        that can be put back are put back), then VerificationError says
        what is held.
        """
        sw = self._state.active
        if sw is None:
            raise PrivilegeError("not switched: nothing to restore")
        if sw.back.succeeded:  # restored already; only the note was left to make
            self._state.active = None
            return
        back = sw.back
        if sw.owner and sw.owner != threading.get_native_id():
            back = self._back_from_another_thread(sw)
        status = back.attempt()
        if status == SwitchStatus.OK:
            self._state.active = None
            if back is not sw.back:
                _check_owner_restored(sw)
            return
        result = back.result(status)
        why = _describe_failure(result)
        failed = result.failed_step
        later = back.steps[back.steps.index(failed) + 1 :] if failed is not None else ()
        for step in later:  # best effort, each on its own: one failure must not stop the rest
            SwitchPlan([(step, Expect())], [], self.engine).run()
        raise VerificationError(f"restoring failed: {why}; holding {_held(read_creds(caps=True, engine=self.engine))}")

    def _back_from_another_thread(self, sw: _Switch) -> SwitchPlan:
        """The way back for ``restore()`` called from a thread other than
        the one that switched (process scope).  The uid, gid and groups
        calls change every thread, and where the switch left the capability
        sets to the kernel's fixup it puts every thread's back too: then the
        plan is the same, checking this thread's own sets (its permitted and
        inheritable sets, in effect again; no ambient set: the switch
        refused threads with one).  Where the switch moved the switching
        thread's sets by capset, only that thread can move them back:
        PrivilegeError, and the switch stays as it was (unless that thread
        has ended, and its sets with it)."""
        steps = _plan_back(self.mechanism, sw.start, self._groups_op)
        moved = [i for i, (step, _) in enumerate(steps) if step.op in (Op.CAPS_SET, Op.AMBIENT_RAISE)]
        if moved and threads.status(sw.owner) is None:
            # That thread has ended: its sets went with it, and the ids are
            # the process's to put back.
            steps = [s for i, s in enumerate(steps) if i not in moved]
        elif moved:
            raise PrivilegeError(
                f"restore() was called from thread {threading.get_native_id()}, but the switch lowered the "
                f"capability sets of thread {sw.owner} with capset, which changes the calling thread only: only "
                f"thread {sw.owner} can raise them again, so call restore() there (still switched)"
            )
        mine = current_caps(self.engine)
        if mine is not None:
            sets = CapSets(mine.permitted, mine.permitted, mine.inheritable, 0)
            steps[-1] = (steps[-1][0], replace(steps[-1][1], caps=sets))
        return SwitchPlan(steps, [], self.engine)

    def _unwind(self) -> None:
        """Restore, whatever exceptions signal handlers raise meanwhile."""
        pending: BaseException | None = None
        while self._state.active is not None:
            try:
                self.restore()
            except VerificationError:
                raise
            except BaseException as e:  # a signal handler's exception: restoring comes first
                pending = pending or e
        if pending is not None:
            raise pending

    def _unwind_attempts(self) -> None:
        """Three unwinds, each in the finally of the one before: an exception
        a signal handler raises in the few bytecodes before one reaches its
        C call (which blocks signals) cannot skip the next.  Each is a no-op
        once the identity is back."""
        try:
            self._unwind()
        finally:
            try:
                self._unwind()
            finally:
                self._unwind()

    def as_user(self, user: User, group: Group | None = None, groups: _Groups = None) -> _AsUser:
        """``become`` for the duration of a ``with`` block, then ``restore``.

        The targets are resolved and checked and the plans made here, before
        the block.
        Whatever exception arrives (from the block, or from a signal handler
        while switching in or out), the original identity is restored before
        it propagates, or VerificationError says what is held.  The one
        moment Python cannot guard is the instant the interpreter enters
        ``__exit__``: an exception a signal handler raises exactly there
        leaves the switch recorded (``switched`` is True, ``restore()``
        works), and the context manager restores it when it is freed.
        """
        return _AsUser(self, self._plan(user, group, groups))

    # ---------------------------------------------------------- permanent

    def drop_permanently(self, user: User, group: Group | None = None, groups: _Groups = None) -> None:
        """Become ``user``/``group``/``groups`` for good: real, effective and
        saved.  The targets are taken as ``become`` takes them:
        ``drop_permanently("nobody")`` takes nobody's gid and groups.

        Every id is verified after every call (a failed call is undone while
        that is still possible); afterwards no capability may remain, and a
        forked child (C only) checks that no call gets root back, as OpenSSH
        does.  A VerificationError here means the process may still hold
        privilege: do not continue, exit.
        """
        if self.scope != "process":
            raise PrivilegeError(
                "a permanent drop is process-wide: it cannot be made per thread (use Switcher(), scope='process')"
            )
        groups = listed(groups)  # read twice below: it may be a generator
        if self._state.active is not None and needs_lookup(user, group, groups):
            self.restore()  # names are resolved as root, never while switched
        uid, gid, wanted = resolve(user, group, groups)
        if uid == 0:
            raise InvalidTargetError("dropping privileges to uid 0 drops nothing")
        # Everything the regain check needs is loaded now: after the drop the
        # process may no longer be able to read its own installation.
        engine = self.engine
        attempts = _regain_attempts(engine, gid)
        if self._state.active is not None:
            self.restore()
        start = current_identity(engine)
        if start.uids[1] != 0:
            raise PrivilegeError(f"dropping privileges needs effective uid 0, not {start.uids[1]}")
        problem = not threads.alone() and threads.problem_before(uid, permanent=True)
        if problem:
            raise PrivilegeError(
                f"the drop was refused before it started (nothing was changed): {problem}. The C library makes "
                "the drop's calls in every thread"
            )
        m = self.mechanism
        t = _Tracker(start)
        t.groups_to(wanted)
        t.gid(_MECHANISMS[m.gid].permanent(gid))
        t.uid(_MECHANISMS[m.uid].permanent(uid))
        result = SwitchPlan(t.steps, _undo_drop(engine, m, start), engine).run()
        if result.status is not SwitchStatus.OK:
            where = (
                "the starting identity was restored"
                if result.status is SwitchStatus.ROLLED_BACK
                else f"holding {_held(result.now)}"
            )
            raise VerificationError(f"{_describe_failure(result)} (dropping with {m.uid}/{m.gid}); {where}")
        _check_no_capabilities(engine)
        _check_every_thread(uid, gid, wanted)
        _check_cannot_regain(engine, attempts)


def _check_owner_restored(sw: _Switch) -> None:
    """After ``restore()`` from another thread: the switching thread must
    hold its starting capability sets again (the kernel's fixup raised
    them; /proc shows that thread's).  A thread that has exited holds
    nothing."""
    st, caps = threads.status(sw.owner), sw.start.caps
    if st is None or caps is None:
        return
    held = {k: int(st.get(k, "0"), 16) for k in ("CapEff", "CapPrm", "CapAmb")}
    if held != {"CapEff": caps.effective, "CapPrm": caps.permitted, "CapAmb": caps.ambient}:
        raise VerificationError(
            f"restore() from thread {threading.get_native_id()} put the ids back, but thread {sw.owner}, which "
            f"switched, holds {held['CapEff']:#x} effective, {held['CapPrm']:#x} permitted, {held['CapAmb']:#x} "
            f"ambient, not its starting {_sets(caps.sets)}"
        )


def _undo_drop(engine: Engine, mech: Mechanism, start: Identity) -> list[Step]:
    """Best-effort steps back to ``start`` after a permanent drop failed to
    verify (while the saved id is still 0, that is still possible).

    The chosen mechanism may be unable to restore the real id (seteuid
    cannot), so setresuid/setresgid come first where the C library has them;
    each undo step's failure is ignored and the C side then compares the
    result with the starting identity.
    """
    feats = engine.built
    steps = [Step(Op.SETRESUID, start.uids.ints())] if feats.setresuid else []
    steps += [step for step, _ in _MECHANISMS[mech.uid].back(start.uids)]
    steps += [Step(Op.SETRESGID, start.gids.ints())] if feats.setresgid else []
    steps += [step for step, _ in _MECHANISMS[mech.gid].back(start.gids)]
    return [*steps, Step(Op.SETGROUPS, start.groups)]


def _check_no_capabilities(engine: Engine) -> None:
    """After a full drop the kernel clears the permitted, effective and
    ambient sets, unless keepcaps or a securebit says otherwise.  Whatever
    is left (the inheritable set always is) is cleared now; if privilege
    was left, the drop raises: whatever set keepcaps or the securebit
    expected the process to keep it."""
    before = read_creds(caps=True, engine=engine).caps
    if before is None:
        return  # no capabilities on this platform
    # Each on its own, capset (always allowed) first: a locked securebit
    # makes PR_SET_KEEPCAPS fail, and that must not stop the rest.
    for step in (Step(Op.CAPS_CLEAR, ()), Step(Op.KEEPCAPS, (0,)), Step(Op.AMBIENT_CLEAR, ())):
        SwitchPlan([(step, Expect())], [], engine).run()
    after = read_creds(caps=True, engine=engine).caps
    cleared = after is not None and not after.holds_privilege
    if not cleared:
        raise VerificationError(
            f"after the permanent drop the process still holds capabilities "
            f"({(after or before).describe()}) and they could not be cleared; exit now"
        )
    if before.holds_privilege:
        raise VerificationError(
            f"after the permanent drop the process still held capabilities ({before.describe()}; "
            "PR_SET_KEEPCAPS or a securebit kept them): they have been cleared now, but whatever set "
            "them expected to keep privilege"
        )


def _check_every_thread(uid: int, gid: int, groups: tuple[int, ...]) -> None:
    """Every thread of the process must have dropped too: ids, groups and
    capability sets.

    glibc's and musl's set*id wrappers change every thread they know of; a
    C library (or preload) whose calls change only the calling thread would
    leave the others root, and so do threads no C library knows of: under
    qemu-user every process has a helper thread of the emulator's own, which
    keeps uid 0 and every capability.  The kernel's per-thread accounts in
    /proc say; the refusal names the thread (id and name) that kept
    privilege.  Without /proc only a single-threaded process can be vouched
    for.
    """
    found = threads.others()
    if found is None:
        import threading

        if threading.active_count() > 1:
            raise VerificationError(
                "cannot check that the other threads dropped too (/proc/self/task is not readable); exit now"
            ) from None
        return
    for tid, status in found:
        uids = [int(x) for x in status["Uid"].split()]
        gids = [int(x) for x in status["Gid"].split()]
        held = {int(x) for x in status.get("Groups", "").split()}
        caps = [int(status[k], 16) for k in ("CapPrm", "CapEff", "CapAmb") if k in status]
        if any(u != uid for u in uids) or any(g != gid for g in gids) or held != set(groups):
            raise VerificationError(
                f"after the permanent drop, thread {threads.label(tid, status)} still holds uids {uids}, gids "
                f"{gids}, groups {sorted(held)}, CapPrm/CapEff/CapAmb {[hex(c) for c in caps]}: the drop's calls "
                "did not reach that thread; exit now"
            )
        if any(caps):
            names = ("CapPrm", "CapEff", "CapAmb")
            raise VerificationError(
                f"after the permanent drop, thread {threads.label(tid, status)} holds the dropped ids (uids {uid}, "
                f"gids {gid}, {'groups ' + ','.join(map(str, sorted(held))) if held else 'no groups'}) but still "
                f"holds capabilities ({' '.join(f'{n}={c:#x}' for n, c in zip(names, caps))}): the kernel kept "
                "them for that thread (PR_SET_KEEPCAPS or a securebit set in it); exit now"
            )


def _regain_attempts(engine: Engine, gid: int) -> list[Step]:
    """Every way back to root, as engine steps."""
    attempts = [
        Step(Op.CAPS_RAISE, ()),  # what kept permitted capabilities would allow
        Step(Op.SETUID, (0,)),
        Step(Op.SETEUID, (0,)),
        Step(Op.SETREUID, (-1, 0)),
        Step(Op.SETREUID, (0, -1)),
    ]
    if engine.built.setresuid:
        attempts.append(Step(Op.SETRESUID, (0, 0, 0)))
    if gid != 0:
        attempts += [Step(Op.SETGID, (0,)), Step(Op.SETEGID, (0,))]
    return attempts


def _check_cannot_regain(engine: Engine, attempts: list[Step]) -> None:
    """Try every way back to root in a forked child (C only); any success is fatal."""
    # Fork, not the spawned runner: the question is whether *this* process
    # image (its C library, its preloads) can get root back.
    out = engine.run(attempts, via=Transport.FORK)
    if not out.completed:
        raise VerificationError(f"could not check that root cannot be regained: {out.describe_end()}")
    for r in out.records:
        uids = r.kernel_uids or r.uids
        gids = r.kernel_gids or r.gids
        if r.step.op is Op.CAPS_RAISE:
            regained = bool(r.cap_effective)
        else:
            regained = r.ok or 0 in uids or (r.step.op in (Op.SETGID, Op.SETEGID) and 0 in gids)
        if regained:
            raise VerificationError(
                f"after the permanent drop, {r.step} {'succeeded' if r.ok else 'failed'} and left "
                f"uids {uids}, gids {gids}, CapEff {r.cap_effective or 0:#x}: privilege can be regained; exit now"
            )
