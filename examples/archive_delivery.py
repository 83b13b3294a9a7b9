#!/usr/bin/env python3
"""Deliver a message to mailing-list archive files, each as its owner.

The motivating case of uidprobe (from sendmail's security chapter): a list
saves each message to archives owned by different users, each mode 4600 (the
set-user-ID bit, no execute bits, writable only by the owner).  A file with
the set-user-ID bit and no execute bits is written *as its owner*, so the
delivery program, running as root, becomes bill to append to bill's archive,
becomes root again, then becomes alice.  On NFS root is mapped to nobody and
could not write these files itself: becoming the owner is the only way.

Becoming the owner means becoming the owner's account, groups included, as
sendmail does (initgroups before delivery): an archive kept in a list
directory that only the list's group may enter is reached through the
owner's supplementary groups.  An owner with no account (a bare uid) gets
the file's group and no supplementary groups.

Usage (as root):

    archive_delivery.py ARCHIVE [ARCHIVE ...] < message

Every archive is checked before anything is written, and the switching
mechanism is chosen (from uidprobe's verdicts) before anything is written: on
a platform where no mechanism can come back to root, nothing is delivered.
Exit status: 0 delivered everywhere, 1 refused before writing, 2 a delivery
failed after some succeeded.
"""

from __future__ import annotations

import argparse
import os
import pwd
import stat
import sys

from uidprobe.privileges import NoMechanismError, PrivilegeError, Switcher


class RefusalError(Exception):
    """An archive must not be written; nothing has been written yet."""


def check_archive(path: str) -> os.stat_result:
    """The archive's stat, if it is a set-user-ID, non-executable regular file."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise RefusalError(f"{path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise RefusalError(f"{path}: not a regular file (symlinks are refused)")
    if not st.st_mode & stat.S_ISUID:
        raise RefusalError(f"{path}: no set-user-ID bit: not an archive to be written as its owner")
    if st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
        raise RefusalError(f"{path}: has execute bits: a program, not an archive")
    if st.st_uid == 0:
        raise RefusalError(f"{path}: owned by root: nothing to switch to")
    return st


def append(path: str, st: os.stat_result, message: bytes) -> None:
    """Append to the archive checked as ``st`` (refused if it was replaced)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise PrivilegeError(f"{path} was replaced while delivering")
        os.write(fd, message)
        # Writing by a non-root owner clears the set-user-ID bit; put it
        # back so the next delivery still knows whose file this is.
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
    finally:
        os.close(fd)


def owner_name(st: os.stat_result) -> str | None:
    """The account that owns the archive, if the owner has one."""
    try:
        return pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        return None


def append_as_owner(switcher: Switcher, path: str, st: os.stat_result, message: bytes) -> str:
    """Append as the archive's owner; says whom it became."""
    name = owner_name(st)
    # By name: the account's uid, gid and groups (looked up now, as root).
    with switcher.as_user(name) if name else switcher.as_user(st.st_uid, st.st_gid) as became:
        append(path, st, message)
    groups = ",".join(map(str, became.groups)) or "none"
    return f"{name} (uid {st.st_uid}, groups {groups})" if name else f"uid {st.st_uid}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archives", nargs="+", metavar="ARCHIVE")
    args = parser.parse_args(argv)
    message = sys.stdin.buffer.read()

    try:
        switcher = Switcher()  # the mechanism, from uidprobe's verdicts
        targets = [(p, check_archive(p)) for p in args.archives]
    except (NoMechanismError, RefusalError) as e:
        print(f"archive_delivery: refused, nothing written: {e}", file=sys.stderr)
        return 1
    mech = switcher.mechanism
    for path, st in targets:
        try:
            who = append_as_owner(switcher, path, st, message)
        except (OSError, PrivilegeError) as e:
            print(f"archive_delivery: {path}: {e}", file=sys.stderr)
            return 2
        print(f"delivered to {path} as {who} via {mech.uid}/{mech.gid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
