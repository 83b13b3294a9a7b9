"""Switching identity with the mechanism the verdicts allow, verifying every step.

    from uidprobe.privileges import Switcher

    sw = Switcher()                    # mechanism chosen from uidprobe.config
    with sw.as_user(1001, 1001):       # euid/egid 1001, no supplementary groups
        append_to_bills_archive()
    # root again here

    sw.drop_permanently(65534, 65534)  # and checks root cannot come back

Mechanism, from the verdicts: setresuid/setresgid where HASSETRESUID and
HASSETRESGID hold; else setreuid/setregid where HASSETREUID and HASSETREGID
hold; else seteuid/setegid where USESETEUID and USESETEGID hold; else
NoMechanismError, naming the verdicts that forced it.  The uid and gid
families are chosen separately.

Order: leaving root, groups and gid change first (they need the privilege
the uid change gives up); coming back, the uid first, then gid and groups.

Verification (Tsafrir, Da Silva and Wagner: treat the system as
untrustworthy): after every call the real, effective and saved uid and gid,
the supplementary groups and, on Linux, the filesystem uid and gid are read
back and compared; any mismatch raises VerificationError.  When a temporary
switch fails half-way, the original identity is restored before raising.

Threads: on Linux the kernel keeps credentials per thread, but the C
library's set*id wrappers (glibc's and musl's; CPython's ``os.setresuid`` and
friends call them) change every thread of the process.  So a switch made here
applies to all threads at once, and another thread doing file I/O meanwhile
does it with the switched identity.  Switch only when no other thread relies
on the identity, or from a single-threaded process.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable

__all__ = [
    "Identity",
    "InvalidTargetError",
    "Mechanism",
    "NoMechanismError",
    "PrivilegeError",
    "Switcher",
    "VerificationError",
    "choose_mechanism",
    "current_identity",
]

MAX_ID = 0xFFFFFFFE

if not hasattr(os, "getresuid"):  # pragma: no cover - macOS and other platforms without it
    raise ImportError("uidprobe.privileges needs getresuid/getresgid to verify saved ids")


class PrivilegeError(Exception):
    """Base class: an identity change was refused or went wrong."""


class InvalidTargetError(PrivilegeError, ValueError):
    """A target id or group list is unusable; nothing was changed."""


class NoMechanismError(PrivilegeError):
    """No mechanism can switch and come back here; nothing was changed."""


class VerificationError(PrivilegeError):
    """A call failed, or the ids read back after it are not what they must be."""


Triple = tuple[int, int, int]


@dataclass(frozen=True)
class Identity:
    """Every credential a switch must get right, as read back from the kernel."""

    uids: Triple
    gids: Triple
    groups: tuple[int, ...]  # sorted, without duplicates
    fsuid: int | None  # None where the platform has no filesystem ids to read
    fsgid: int | None


def _fs_ids() -> tuple[int | None, int | None]:
    # /proc/thread-self: credentials are per thread in the kernel.
    for path in ("/proc/thread-self/status", "/proc/self/status"):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        try:
            return int(fields["Uid"].split()[3]), int(fields["Gid"].split()[3])
        except (KeyError, IndexError, ValueError):
            return None, None
    return None, None


def current_identity() -> Identity:
    """The calling thread's credentials, read back now."""
    fsuid, fsgid = _fs_ids()
    return Identity(
        uids=os.getresuid(),
        gids=os.getresgid(),
        groups=tuple(sorted(set(os.getgroups()))),
        fsuid=fsuid,
        fsgid=fsgid,
    )


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


def _check_id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTargetError(f"{what} must be an integer, not {value!r}")
    if value in (-1, 0xFFFFFFFF):
        raise InvalidTargetError(f"{what} -1 means 'unchanged' to the set*id calls and is never a target")
    if not 0 <= value <= MAX_ID:
        raise InvalidTargetError(f"{what} {value} is out of range (0..{MAX_ID})")
    return value


def _check_groups(groups: Iterable[int]) -> tuple[int, ...]:
    listed = tuple(_check_id(g, "supplementary group") for g in groups)
    limit = os.sysconf("SC_NGROUPS_MAX")
    if len(listed) > limit:
        raise InvalidTargetError(f"{len(listed)} supplementary groups exceed NGROUPS_MAX ({limit})")
    return listed


def _call(fn: Callable[..., None], *args: int) -> None:
    """Make one C library call through os; a failure is a VerificationError."""
    try:
        fn(*args)
    except OSError as e:
        name = errno_mod.errorcode.get(e.errno or 0, str(e.errno))
        raise VerificationError(f"{_describe(fn, args)} failed: {name} ({e.strerror})") from None


def _describe(fn: Callable[..., None], args: tuple[int, ...]) -> str:
    if fn is os.setgroups:
        return f"setgroups({list(args[0]) if args else []})"  # type: ignore[call-overload]
    return f"{fn.__name__}({', '.join(map(str, args))})"


def _step(fn: Callable[..., None], *args: int, **expected: object) -> Identity:
    """Make one call, then read every id back and check ``expected``."""
    _call(fn, *args)
    return _verify(_describe(fn, args), **expected)


def _verify(after: str, **expected: object) -> Identity:
    """Read every id back and compare with ``expected`` (None: not checked)."""
    now = current_identity()
    for field, want in expected.items():
        if want is None:
            continue
        got = getattr(now, field)
        if field in ("uids", "gids"):
            assert isinstance(want, tuple)
            for label, w, g in zip(("real", "effective", "saved"), want, got):
                if w is not None and w != g:
                    raise VerificationError(
                        f"after {after}: {label} {field[:-1]} is {g}, should be {w} "
                        f"(read back {field} {got}, expected {want})"
                    )
        elif got is not None and got != want:
            raise VerificationError(f"after {after}: {field} is {got!r}, should be {want!r}")
    return now


def _setreuid_saved(real: int, new_real: int, new_eff: int, old_saved: int) -> int:
    """The saved id setreuid/setregid leaves (POSIX, and Linux's man page):
    the new effective id when the real id is set or the effective id becomes
    something other than the (old) real id, else unchanged."""
    if new_real != -1 or new_eff != real:
        return new_eff
    return old_saved


class Switcher:
    """Temporary and permanent identity switches for a root process.

    ``values`` are the config values to choose the mechanism from (default:
    ``uidprobe.config``).  One switch at a time: ``become`` then ``restore``.
    """

    def __init__(self, values: Mapping[str, int | str | None] | None = None) -> None:
        if values is None:
            from uidprobe import config

            values = config.VARS
        self.values = dict(values)
        self.mechanism = choose_mechanism(self.values)
        self._saved: Identity | None = None

    @property
    def switched(self) -> bool:
        return self._saved is not None

    # ---------------------------------------------------------- temporary

    def become(self, uid: int, gid: int, groups: Iterable[int] = ()) -> None:
        """Take ``uid``/``gid``/``groups`` as the effective identity, keeping
        the means to come back (``restore``).  Needs effective uid 0."""
        uid, gid = _check_id(uid, "uid"), _check_id(gid, "gid")
        wanted = _check_groups(groups)
        if self._saved is not None:
            raise PrivilegeError("already switched: restore() before switching again")
        start = current_identity()
        if start.uids[1] != 0:
            raise PrivilegeError(f"becoming another user needs effective uid 0, not {start.uids[1]}")
        self._saved = start
        try:
            self._set_groups(wanted)
            self._temp_gid(start, gid)
            self._temp_uid(start, uid)
            _verify("the switch", fsuid=uid, fsgid=gid)
        except PrivilegeError as e:
            try:
                self.restore()
            except PrivilegeError as again:
                raise VerificationError(f"{e}; and restoring failed too: {again}") from e
            raise

    def restore(self) -> None:
        """Return to the identity ``become`` started from; uid first."""
        s = self._saved
        if s is None:
            raise PrivilegeError("not switched: nothing to restore")
        if current_identity() == s:  # a switch that failed at its first call changed nothing
            self._saved = None
            return
        self._restore_uid(s)
        self._restore_gid(s)
        self._set_groups(s.groups)
        _verify("restoring", uids=s.uids, gids=s.gids, groups=s.groups, fsuid=s.fsuid, fsgid=s.fsgid)
        self._saved = None

    @contextlib.contextmanager
    def as_user(self, uid: int, gid: int, groups: Iterable[int] = ()) -> Iterator[Identity]:
        """``become`` for the duration of a ``with`` block, then ``restore``."""
        self.become(uid, gid, groups)
        try:
            yield current_identity()
        finally:
            self.restore()

    def _set_groups(self, groups: tuple[int, ...]) -> None:
        _call(os.setgroups, list(groups))  # type: ignore[arg-type]
        _verify(f"setgroups({list(groups)})", groups=tuple(sorted(set(groups))))

    def _temp_uid(self, s: Identity, uid: int) -> None:
        r, _, sv = s.uids
        if self.mechanism.uid == "setresuid":
            _step(os.setresuid, -1, uid, -1, uids=(r, uid, sv))
        elif self.mechanism.uid == "setreuid":
            # Real 0 is what lets setreuid(-1, 0) come back (sendmail's t_setreuid).
            _step(os.setreuid, 0, uid, uids=(0, uid, uid))
        else:
            if sv != 0 and r != 0:
                raise NoMechanismError("seteuid cannot come back: neither the real nor the saved uid is 0")
            _step(os.seteuid, uid, uids=(r, uid, sv))

    def _restore_uid(self, s: Identity) -> None:
        r, e, sv = s.uids
        now = current_identity().uids
        if self.mechanism.uid == "setresuid":
            _step(os.setresuid, r, e, sv, uids=s.uids)
        elif self.mechanism.uid == "setreuid":
            _step(os.setreuid, -1, 0, uids=(now[0], 0, _setreuid_saved(now[0], -1, 0, now[2])))
            _step(os.setreuid, r, e, uids=s.uids)
        else:
            _step(os.seteuid, e, uids=s.uids)

    def _temp_gid(self, s: Identity, gid: int) -> None:
        r, _, sv = s.gids
        if self.mechanism.gid == "setresgid":
            _step(os.setresgid, -1, gid, -1, gids=(r, gid, sv))
        elif self.mechanism.gid == "setregid":
            _step(os.setregid, -1, gid, gids=(r, gid, _setreuid_saved(r, -1, gid, sv)))
        else:
            _step(os.setegid, gid, gids=(r, gid, sv))

    def _restore_gid(self, s: Identity) -> None:
        r, e, sv = s.gids
        if self.mechanism.gid == "setresgid":
            _call(os.setresgid, r, e, sv)
        elif self.mechanism.gid == "setregid":
            _call(os.setregid, r, e)
        else:
            _call(os.setegid, e)
        _verify(f"restoring gids with {self.mechanism.gid}", gids=s.gids)

    # ---------------------------------------------------------- permanent

    def drop_permanently(self, uid: int, gid: int, groups: Iterable[int] = ()) -> None:
        """Become ``uid``/``gid``/``groups`` for good: real, effective and saved.

        Verifies every id, then checks in a forked child (C only, via the
        probe engine) that no call gets root back, as OpenSSH does.  A
        VerificationError here means the process may still hold privilege:
        do not continue, exit.
        """
        uid, gid = _check_id(uid, "uid"), _check_id(gid, "gid")
        wanted = _check_groups(groups)
        if uid == 0:
            raise InvalidTargetError("dropping privileges to uid 0 drops nothing")
        # Everything the regain check needs is loaded now: after the drop the
        # process may no longer be able to read its own installation.
        attempts = _regain_attempts(gid)
        if self._saved is not None:
            self.restore()
        if os.geteuid() != 0:
            raise PrivilegeError(f"dropping privileges needs effective uid 0, not {os.geteuid()}")
        self._set_groups(wanted)
        if self.mechanism.gid == "setresgid":
            _call(os.setresgid, gid, gid, gid)
        elif self.mechanism.gid == "setregid":
            _call(os.setregid, gid, gid)
        else:
            _call(os.setgid, gid)
        _verify(f"dropping the gid with {self.mechanism.gid}", gids=(gid, gid, gid))
        if self.mechanism.uid == "setresuid":
            _call(os.setresuid, uid, uid, uid)
        elif self.mechanism.uid == "setreuid":
            _call(os.setreuid, uid, uid)
        else:
            _call(os.setuid, uid)
        _verify(
            f"dropping the uid with {self.mechanism.uid}",
            uids=(uid, uid, uid),
            gids=(gid, gid, gid),
            groups=tuple(sorted(set(wanted))),
            fsuid=uid,
            fsgid=gid,
        )
        _check_cannot_regain(attempts)


def _regain_attempts(gid: int) -> list[Any]:
    """Every way back to root, as engine steps (loads the engine now)."""
    from uidprobe import engine
    from uidprobe.engine import Op, Step

    attempts = [
        Step(Op.SETUID, (0,)),
        Step(Op.SETEUID, (0,)),
        Step(Op.SETREUID, (-1, 0)),
        Step(Op.SETREUID, (0, -1)),
    ]
    if engine.features().setresuid:
        attempts.append(Step(Op.SETRESUID, (0, 0, 0)))
    if gid != 0:
        attempts += [Step(Op.SETGID, (0,)), Step(Op.SETEGID, (0,))]
    return attempts


def _check_cannot_regain(attempts: list[Any]) -> None:
    """Try every way back to root in a forked child (C only); any success is fatal."""
    from uidprobe import engine  # already imported by _regain_attempts
    from uidprobe.engine import Op

    # Fork, not the spawned runner: the question is whether *this* process
    # image (its C library, its preloads) can get root back.
    out = engine.run(attempts, via="fork")
    if not out.completed:
        raise VerificationError(f"could not check that root cannot be regained: {out.describe_end()}")
    for r in out.records:
        if r.ok or 0 in r.uids or (r.step.op in (Op.SETGID, Op.SETEGID) and 0 in r.gids):
            raise VerificationError(
                f"after the permanent drop, {r.step} {'succeeded' if r.ok else 'failed'} and left "
                f"uids {r.uids}, gids {r.gids}: privilege can be regained; exit now"
            )
