"""Names to numbers: the user, group and supplementary groups a switch targets.

A user given by name is an account: its uid and primary gid come from the
password database, its supplementary groups from the group database
(``os.getgrouplist``), as ``initgroups`` sets them for OpenSSH, sendmail,
``su`` and ``setpriv --init-groups``.  A user given as a number is just that
number: its gid must be given too, and it gets no supplementary groups
unless they are listed (``setpriv --clear-groups``), exactly as before names
were accepted.  Root's own groups are never kept (``--keep-groups``): a
switched process still in group 0 or ``shadow`` would hold root's file access.

Every lookup happens here, in Python, before a switch starts: a name service
(NSS: sssd, LDAP, nscd) may load modules, open sockets and take locks, so it
must never run inside the C switch or while the thread is switched.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Iterable
from typing import NamedTuple, Union, cast

from uidprobe.engine import MAX_SWITCH_GROUPS
from uidprobe.errors import InvalidTargetError, PrivilegeError
from uidprobe.ids import MAX_ID

__all__ = ["Group", "Target", "User", "check_groups", "check_id", "listed", "needs_lookup", "resolve"]

#: A user: a uid, or a name in the password database.
User = Union[int, str]
#: A group: a gid, or a name in the group database.
Group = Union[int, str]


class Target(NamedTuple):
    """The numbers a switch sets, checked."""

    uid: int
    gid: int
    groups: tuple[int, ...]


def needs_lookup(user: object, group: object, groups: tuple[object, ...] | None) -> bool:
    """Would ``resolve`` consult a name service for these targets?"""
    kinds = set(map(type, groups or ()))  # per type, not per group: lists may be long
    return isinstance(user, str) or isinstance(group, str) or any(issubclass(k, str) for k in kinds)


def check_id(value: object, what: str) -> int:
    """``value`` if it can be a target id; InvalidTargetError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTargetError(f"{what} must be an integer or a name, not {value!r}")
    if value in (-1, 0xFFFFFFFF):
        raise InvalidTargetError(f"{what} -1 means 'unchanged' to the set*id calls and is never a target")
    if not 0 <= value <= MAX_ID:
        raise InvalidTargetError(f"{what} {value} is out of range (0..{MAX_ID})")
    return value


_NGROUPS_MAX: list[int] = []  # sysconf costs microseconds: asked once


def check_groups(groups: tuple[object, ...], whose: str = "") -> tuple[int, ...]:
    """``groups`` as gids (names looked up), each once, in the order given,
    if a switch can set and verify them all; else InvalidTargetError naming
    the group, or the count and both limits.  A group listed twice (a name
    and its number, or the primary group in the database's list too) is
    one group: only distinct groups count toward the limits."""
    checked = _plain_ids(groups)
    if checked is None:  # names to look up, or something to refuse with a precise message
        checked = tuple(_group(g, "supplementary group") for g in groups)
    checked = tuple(dict.fromkeys(checked))
    if not _NGROUPS_MAX:
        _NGROUPS_MAX.append(os.sysconf("SC_NGROUPS_MAX"))
    kernel = _NGROUPS_MAX[0]
    if len(checked) > min(kernel, MAX_SWITCH_GROUPS):
        raise InvalidTargetError(
            f"{whose}{len(checked)} supplementary groups exceed the limit: uidprobe's switch sets and verifies "
            f"at most {MAX_SWITCH_GROUPS}, and the kernel allows {kernel} (NGROUPS_MAX)"
        )
    return checked


def _plain_ids(groups: tuple[object, ...]) -> tuple[int, ...] | None:
    """``groups`` if every one is a plain int in range, checked at C speed
    (a switch to a thousand groups should not spend its time here)."""
    if not set(map(type, groups)) <= {int}:
        return None
    ids = cast("tuple[int, ...]", groups)
    return ids if not ids or (min(ids) >= 0 and max(ids) <= MAX_ID) else None


def _group(group: object, what: str) -> int:
    if not isinstance(group, str):
        return check_id(group, what)
    try:
        return grp.getgrnam(group).gr_gid
    except (KeyError, ValueError):  # ValueError: an embedded NUL
        raise InvalidTargetError(f"{what}: no group named {group!r} in the group database") from None


def resolve(user: User, group: Group | None = None, groups: Iterable[Group] | None = None) -> Target:
    """The uid, gid and supplementary groups for a switch to ``user``.

    ``group`` defaults to a named user's primary group; a numeric uid needs
    it.  ``groups``: None (not given) means a named user's groups from the
    group database and none for a numeric uid; ``()`` means none; a list
    means exactly those.  InvalidTargetError names whatever is unknown.
    """
    given = listed(groups)
    if needs_lookup(user, group, given) and os.geteuid() != 0:
        # Switched already (or never root): a name service must not run here.
        raise PrivilegeError(f"names are resolved with effective uid 0 only, and it is {os.geteuid()} here")
    gid = None if group is None else _group(group, "gid")
    whose = ""
    if isinstance(user, str):
        try:
            pw = pwd.getpwnam(user)
        except (KeyError, ValueError):
            raise InvalidTargetError(f"no user named {user!r} in the password database") from None
        uid = pw.pw_uid
        gid = pw.pw_gid if gid is None else gid
        if given is None:
            gid = check_id(gid, "gid")
            try:
                given = tuple(os.getgrouplist(user, gid))
            except OSError as e:
                raise InvalidTargetError(f"the groups of user {user!r} cannot be read: {e}") from None
            whose = f"user {user!r}: "
    else:
        uid = check_id(user, "uid")
        if gid is None:
            raise InvalidTargetError(
                f"uid {user} is a number: give its gid too, or name the user to take the account's gid and groups"
            )
    return Target(uid, check_id(gid, "gid"), check_groups(given or (), whose))


def listed(groups: Iterable[Group] | None) -> tuple[Group, ...] | None:
    """``groups`` as a tuple, read once (it may be a generator)."""
    if groups is None:
        return None
    if isinstance(groups, (str, bytes)):
        raise InvalidTargetError(f"groups must be a list of groups, not the string {groups!r}")
    return tuple(groups)
