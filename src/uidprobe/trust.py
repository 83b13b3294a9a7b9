"""The safe-file rule, decided from open descriptors, for reading and writing.

A root process acts on what it reads from the store, and root writes files
where users point it (``configure --store``, ``model -o``).  A check of a
path followed by a second open of the same path is a race: between the two,
another user can swap a symlink, create a missing file or rename a
directory.  So every decision here is made on a descriptor that is then
used: the path is walked from ``/`` one component at a time with
``openat(parent, name, O_NOFOLLOW)``, each directory is ``fstat``-ed and
checked before anything is opened inside it, and the file is judged by the
``fstat`` of the descriptor that is read.

The rule (sendmail's safe-file rule, with every credential taken into
account; this is the one place it is written down):

* The trusted owners are root and, only for a process that holds nothing
  beyond a uid U, also U.  Holding nothing beyond U means: real, effective
  and saved uid are all U; real, effective and saved gid are all one gid;
  neither that gid nor a supplementary group is 0 (root's group, whose
  file access is beyond U's); and no capability in the effective,
  permitted or ambient set (U has none; on Linux the sets are read from
  /proc, and a process whose sets cannot be read is assumed to hold some).
  Any other process trusts only root's files: one that can get root back
  (a uid 0), runs with mixed uids, holds a gid it could act with (a
  set-group-ID program: gids 1000, 0, 0; gids all 0; group 0 among its
  groups) or a capability (ambient CAP_SETUID) is more than U, and what it
  reads now it may act on with that privilege later.  A refusal says which
  of these it was.
* Every directory from ``/`` down is owned by a trusted owner and not
  writable by group or others, unless it is root's and sticky (``/tmp``),
  where others cannot rename or delete entries they do not own.
* The file is a regular file (never a FIFO, device, socket or directory:
  those are not even opened for reading), owned by a trusted owner, not
  writable by group or others, not empty and not larger than the caller's
  bound.  Pseudo-files under ``/proc`` and ``/sys`` report size 0, so they are
  refused as empty without a single read.
* Symbolic links are resolved once, as the kernel would, but each one must be
  owned by a trusted owner (it sits in a directory already checked, so only a
  trusted owner can have put it there or can replace it) and every component
  of its target is walked and checked the same way.  At most MAX_SYMLINKS
  links per path.  A link's target is read from the descriptor of the link
  itself.  Writing never follows a symlink at the final name: it is refused.

Only ``os`` and ``stat`` at import: reading the store is
on the import path of ``uidprobe.config``, which must stay cheap.
"""

from __future__ import annotations

import os
import stat
import sys

from uidprobe.errors import WriteError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: see uidprobe/__init__.py
if TYPE_CHECKING:
    from typing import Literal

    Missing = Literal["refuse", "create", "stop"]
    Ids = tuple[int, int, int]

__all__ = [
    "MAX_SYMLINKS",
    "Reader",
    "WriteError",
    "cap_names",
    "check_writable",
    "current_reader",
    "read_trusted",
    "write_atomic",
]

MAX_SYMLINKS = 40  # Linux's own limit per path lookup

_O_PATH: int = getattr(os, "O_PATH", 0)  # Linux: a handle that never opens the object itself
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW  # NONBLOCK: belt and braces, never wait on an open
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW
_UNSAFE_DIR_MODE = stat.S_IWGRP | stat.S_IWOTH


class _WalkError(Exception):
    """A walk stopped: ``kind`` is absent, unsafe, invalid or unreadable."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class Reader:
    """The credentials whose trust a walk applies (a plain class: see store.py).

    ``uids`` and ``gids`` are (real, effective, saved); ``caps`` is the union
    of the effective, permitted and ambient capability sets, or None when
    it could not be read; ``groups`` the supplementary groups.
    """

    __slots__ = ("caps", "gids", "groups", "uids")

    def __init__(self, uids: Ids, gids: Ids, caps: int | None, groups: tuple[int, ...] = ()) -> None:
        self.uids = uids
        self.gids = gids
        self.caps = caps
        self.groups = groups


def current_reader() -> Reader:
    """This thread's credentials.

    Where a saved id cannot be read (no getresuid), -1 stands for it: the
    three are then never all equal, so only root's files are trusted.  The
    capability sets and groups are read only where they can matter: for a
    process whose uids and gids are each one id other than root.
    """
    if hasattr(os, "getresuid"):
        uids, gids = os.getresuid(), os.getresgid()
    else:  # pragma: no cover (Linux has getresuid)
        uids, gids = (os.getuid(), os.geteuid(), -1), (os.getgid(), os.getegid(), -1)
    caps: int | None = None
    groups: tuple[int, ...] = ()
    if uids[0] == uids[1] == uids[2] != 0 and gids[0] == gids[1] == gids[2] != 0:
        caps, groups = _held_caps(), tuple(os.getgroups())
    return Reader(uids, gids, caps, groups)


def _held_caps() -> int | None:
    """The effective, permitted and ambient sets together; None if unknown.
    Off Linux there are no such sets: 0."""
    if not sys.platform.startswith("linux"):
        return 0  # pragma: no cover
    for path in ("/proc/thread-self/status", "/proc/self/status"):  # this thread's: credentials are per thread
        try:
            with open(path, "rb") as f:
                text = f.read()
        except OSError:
            continue
        held, seen = 0, 0
        for line in text.splitlines():
            name, _, value = line.partition(b":")
            if name in (b"CapEff", b"CapPrm", b"CapAmb"):
                held |= int(value, 16)
                seen += 1
        return held if seen >= 2 else None  # CapAmb is missing before Linux 4.3
    return None


#: Linux's capability names, by number (linux/capability.h).
_CAP_NAMES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
    "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
    "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE "
    "AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ "
    "PERFMON BPF CHECKPOINT_RESTORE"
)


def cap_names(caps: int, most: int = 4) -> str:
    """``CAP_SETGID, CAP_SETUID`` for a set (the first ``most``, then a count)."""
    known = _CAP_NAMES.split()
    names = [f"CAP_{known[i]}" if i < len(known) else f"capability {i}" for i in range(64) if caps >> i & 1]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


class _Rule:
    """The owners a reader trusts, and how a refusal names them."""

    __slots__ = ("owners", "whom")

    def __init__(self, owners: tuple[int, ...], whom: str) -> None:
        self.owners = owners
        self.whom = whom

    def refuse(self, what: str, owner: int) -> str:
        return f"{what} is owned by uid {owner}, not {self.whom}"


def _rule(reader: Reader) -> _Rule:
    """The rule of the module's documentation, for ``reader``."""
    r, e, s = reader.uids
    if not r == e == s:
        why = f"real, effective and saved uids {r}, {e}, {s} differ"
    elif r == 0:
        return _Rule((0,), "root")
    elif not reader.gids[0] == reader.gids[1] == reader.gids[2]:
        why = f"this process's gids differ {tuple(reader.gids)}"
    elif reader.gids[0] == 0 or 0 in reader.groups:
        why = "this process holds gid 0, root's group"
    elif reader.caps is None:
        why = "this process's capability sets cannot be read"
    elif reader.caps:
        why = f"this process holds {cap_names(reader.caps)}"
    else:
        return _Rule((0, r), f"root or uid {r}")
    return _Rule((0,), f"root ({why}: only root's files are trusted)")


def _join(parent: str, name: str) -> str:
    return parent + name if parent.endswith("/") else f"{parent}/{name}"


def _check_dir(st: os.stat_result, path: str, rule: _Rule) -> None:
    if st.st_uid not in rule.owners:
        raise _WalkError("unsafe", rule.refuse(f"directory {path}", st.st_uid))
    mode = stat.S_IMODE(st.st_mode)
    if mode & _UNSAFE_DIR_MODE and not (mode & stat.S_ISVTX and st.st_uid == 0):
        who = "others" if mode & stat.S_IWOTH else "group"
        raise _WalkError("unsafe", f"directory {path} is writable by {who} (mode {mode:04o})")


def _file_problem(st: os.stat_result, path: str, rule: _Rule) -> str | None:
    """Why a file with this fstat must not be trusted ("kind: detail"), or None."""
    if not stat.S_ISREG(st.st_mode):
        return f"invalid: {path} is not a regular file"
    if st.st_uid not in rule.owners:
        return "unsafe: " + rule.refuse(path, st.st_uid)
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "others" if mode & stat.S_IWOTH else "group"
        return f"unsafe: {path} is writable by {who} (mode {mode:04o})"
    return None


def _size_or_file_problem(st: os.stat_result, path: str, rule: _Rule, max_bytes: int) -> str | None:
    problem = _file_problem(st, path, rule)
    if problem:
        return problem
    if st.st_size == 0:  # also every /proc and tracefs pseudo-file: never read one
        return "invalid: the file is empty"
    if st.st_size > max_bytes:
        return f"invalid: larger than {max_bytes} bytes"
    return None


def _look(name: str, dfd: int) -> tuple[int | None, os.stat_result]:
    """Open ``name`` in ``dfd`` without following or reading it: (fd, stat).

    On Linux an O_PATH descriptor: it opens no device, never blocks on a FIFO,
    and can stand for a symlink itself.  Elsewhere a directory is opened for
    reading and anything else is only looked at (fd None); its type still
    decides nothing by itself, as the file that is read is judged again by
    the descriptor that reads it.
    """
    if _O_PATH:
        fd = os.open(name, _O_PATH | _NOFOLLOW, dir_fd=dfd)
        try:
            return fd, os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
    import errno  # pragma: no cover (Linux has O_PATH)

    try:  # pragma: no cover
        fd = os.open(name, _DIRECTORY | os.O_NONBLOCK, dir_fd=dfd)
    except OSError as e:  # pragma: no cover
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        return None, os.stat(name, dir_fd=dfd, follow_symlinks=False)
    return fd, os.fstat(fd)  # pragma: no cover


def _readlink(name: str, dfd: int, fd: int | None) -> str:
    if fd is not None:
        return os.readlink("", dir_fd=fd)  # the link we fstat-ed, not whatever has its name now
    return os.readlink(name, dir_fd=dfd)  # pragma: no cover (no O_PATH: the directory is safe, so the name is stable)


def _close_all(chain: list[tuple[int, str]]) -> None:
    for fd, _ in chain:
        os.close(fd)
    chain.clear()


def _make_dir(name: str, dfd: int, here: str, missing: Missing) -> tuple[int | None, os.stat_result] | None:
    """A missing directory on the way: refuse, create (then look), or None to stop."""
    if missing == "stop":
        return None
    if missing == "refuse":
        raise _WalkError("absent", f"directory {here} does not exist")
    try:
        os.mkdir(name, 0o755, dir_fd=dfd)
    except FileExistsError:
        pass  # made meanwhile by someone else: it is checked like any other
    except OSError as e:
        raise _WalkError("unreadable", f"cannot create directory {here}: {e.strerror}") from None
    return _look(name, dfd)


def _link_target(name: str, dfd: int, fd: int | None, st: os.stat_result, here: str, rule: _Rule) -> str:
    """The target of a symlink that may be followed (closes ``fd``)."""
    try:
        if st.st_uid not in rule.owners:
            raise _WalkError("unsafe", rule.refuse(f"symbolic link {here}", st.st_uid))
        return _readlink(name, dfd, fd)
    finally:
        if fd is not None:
            os.close(fd)


def _components(path: str) -> list[str]:
    """The names to walk from ``/``, last name first (a stack)."""
    if not path or "\0" in path:
        raise _WalkError("invalid", "the path is empty or contains a NUL byte")
    full = path if path.startswith("/") else _join(os.getcwd(), path)
    if full.rsplit("/", 1)[1] in ("", ".", ".."):
        raise _WalkError("invalid", f"{path} names a directory, not a regular file")
    return [c for c in reversed(full.split("/")) if c and c != "."]


def _walk(
    path: str, rule: _Rule, *, missing: Missing, follow_final: bool
) -> tuple[list[tuple[int, str]], str | None, int | None, os.stat_result | None]:
    """Walk ``path`` from ``/`` by descriptor, checking every directory.

    Returns the chain of (directory fd, physical path), ending with the
    directory that holds the final name; the final name; and its O_PATH fd
    and fstat (None, None when it does not exist).  ``missing`` says what a
    missing directory does: refuse (raise absent), create it (0755), or stop
    (return with the final name None: the rest would be created).  The caller
    closes the chain's fds and the final fd.  Raises _WalkError.
    """
    todo = _components(path)
    root = os.open("/", (_O_PATH or os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC)
    chain = [(root, "/")]
    try:
        _check_dir(os.fstat(root), "/", rule)
        hops = 0
        while todo:
            name = todo.pop()
            if name == "..":  # the physical parent: the chain holds only real directories
                if len(chain) > 1:
                    os.close(chain.pop()[0])
                continue
            dfd, dpath = chain[-1]
            here = _join(dpath, name)
            final = not todo
            try:
                fd, st = _look(name, dfd)
            except FileNotFoundError:
                made = None if final else _make_dir(name, dfd, here, missing)
                if made is None:
                    return chain, (name if final else None), None, None
                fd, st = made
            except OSError as e:
                raise _WalkError("unreadable", f"cannot open {here}: {e.strerror}") from None
            if stat.S_ISLNK(st.st_mode) and (follow_final or not final):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise _WalkError("unsafe", f"{path}: more than {MAX_SYMLINKS} symbolic links")
                target = _link_target(name, dfd, fd, st, here, rule)
                if target.startswith("/"):
                    while len(chain) > 1:
                        os.close(chain.pop()[0])
                todo.extend(c for c in reversed(target.split("/")) if c and c != ".")
                continue
            if final:
                return chain, name, fd, st
            if fd is None or not stat.S_ISDIR(st.st_mode):
                if fd is not None:
                    os.close(fd)
                raise _WalkError("invalid", f"{here} is not a directory")
            chain.append((fd, here))
            _check_dir(st, here, rule)
        # A symlink whose target ends in "..": the path names a directory.
        raise _WalkError("invalid", f"{path} names a directory, not a regular file")
    except BaseException:
        _close_all(chain)
        raise


# ------------------------------------------------------------------ reading


def read_trusted(path: str, *, max_bytes: int, reader: Reader | None = None) -> tuple[bytes | None, str]:
    """The bytes of ``path`` if the safe-file rule trusts it, else (None, why).

    ``why`` starts with ``absent``, ``unsafe:``, ``invalid:`` or
    ``unreadable:``; it is "valid" with the bytes.  A file is absent only if
    every directory that exists on its way is safe.  ``reader`` (whose
    trust to apply) defaults to this thread's credentials.  Raises nothing but what
    the interpreter itself may raise (MemoryError, KeyboardInterrupt).
    """
    rule = _rule(current_reader() if reader is None else reader)
    try:
        chain, name, fd, st = _walk(path, rule, missing="refuse", follow_final=True)
    except _WalkError as r:
        return None, f"{r.kind}: {r.detail}"
    except OSError as e:  # "/" itself, or the working directory
        return None, f"unreadable: {path}: {e.strerror}"
    try:
        if fd is not None:
            os.close(fd)
        dfd, dpath = chain[-1]
        if name is None or st is None:
            return None, f"absent: no file at {path}"
        here = _join(dpath, name)
        problem = _size_or_file_problem(st, here, rule, max_bytes)
        if problem:
            return None, problem  # a FIFO, device, socket or directory is never opened for reading
        try:
            rfd = os.open(name, _READ, dir_fd=dfd)
        except OSError as e:
            return None, f"unreadable: cannot open {here}: {e.strerror}"
        try:
            # The descriptor we read decides.  If the name was replaced since
            # the look above (only a trusted owner can do that in a checked
            # directory, e.g. a concurrent 'configure'), the new file is
            # judged here in full.
            problem = _size_or_file_problem(os.fstat(rfd), here, rule, max_bytes)
            if problem:
                return None, problem
            chunks: list[bytes] = []
            size = 0
            while size <= max_bytes:
                chunk = os.read(rfd, max_bytes + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as e:
            return None, f"unreadable: {here}: {e.strerror}"
        finally:
            os.close(rfd)
        if size > max_bytes:
            return None, f"invalid: larger than {max_bytes} bytes"
        return b"".join(chunks), "valid"
    finally:
        _close_all(chain)


# ------------------------------------------------------------------ writing


def _writable_chain(
    path: str, reader: Reader | None, *, missing: Missing
) -> tuple[list[tuple[int, str]], str | None, int | None]:
    """The checked chain, the final name, and the final fd (refused if not a regular file)."""
    rule = _rule(current_reader() if reader is None else reader)
    try:
        chain, name, fd, st = _walk(path, rule, missing=missing, follow_final=False)
    except _WalkError as r:
        raise WriteError(r.detail) from None
    except OSError as e:
        raise WriteError(f"{path}: {e.strerror}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        here = _join(_chain_path(chain), name or "")
        if fd is not None:
            os.close(fd)
        _close_all(chain)
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise WriteError(f"{here} is {what}: refusing to replace it")
    return chain, name, fd


def _chain_path(chain: list[tuple[int, str]]) -> str:
    """The physical path of the last directory in a chain (for messages)."""
    return chain[-1][1] if chain else "/"


def check_writable(path: str, *, make_dirs: bool = False, reader: Reader | None = None) -> None:
    """Raise WriteError if ``write_atomic(path)`` would be refused now.

    Creates nothing.  Lets a command refuse an unsafe destination before its
    expensive work; ``write_atomic`` decides again when it writes.
    """
    chain, _, fd = _writable_chain(path, reader, missing="stop" if make_dirs else "refuse")
    if fd is not None:
        os.close(fd)
    _close_all(chain)


def write_atomic(
    path: str, data: bytes, mode: int = 0o644, *, make_dirs: bool = False, reader: Reader | None = None
) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file.

    The directory chain is walked and checked by descriptor (missing
    directories created 0755 with ``make_dirs``); a symlink or non-regular
    file at the final name is refused.  A temporary file is created next to
    it with O_CREAT | O_EXCL | O_NOFOLLOW relative to the checked directory's
    descriptor, written, fchmod-ed, fsync-ed and renamed over the name within
    that same directory, which is then fsync-ed through its own descriptor.
    So a directory renamed or swapped meanwhile gets the file where it was
    checked, or the write fails; nothing is ever reopened by path.

    Raises WriteError (one line) for an unsafe chain and for any failure on
    the way; the temporary file is then removed.
    """
    chain, name, fd = _writable_chain(path, reader, missing="create" if make_dirs else "refuse")
    try:
        if fd is not None:
            os.close(fd)
        dpath = _chain_path(chain)
        if name is None:  # cannot happen: "create" and "refuse" always reach the final name
            raise WriteError(f"{path} names no file")
        try:
            dfd = os.open(".", _DIRECTORY, dir_fd=chain[-1][0])  # readable: O_PATH cannot be fsync-ed
        except OSError as e:
            raise WriteError(f"cannot open directory {dpath}: {e.strerror}") from None
        try:
            _replace(dfd, dpath, name, data, mode)
        finally:
            os.close(dfd)
    finally:
        _close_all(chain)


def _replace(dfd: int, dpath: str, name: str, data: bytes, mode: int) -> None:
    tmp: str | None = None
    for _ in range(100):
        candidate = f".uidprobe.{os.urandom(6).hex()}.tmp"
        try:
            tfd = os.open(candidate, _CREATE, 0o600, dir_fd=dfd)
        except FileExistsError:
            continue  # another user's entry in a sticky directory: take another name
        except OSError as e:
            raise WriteError(f"cannot create a file in {dpath}: {e.strerror}") from None
        tmp = candidate
        break
    else:
        raise WriteError(f"cannot create a file in {dpath}: every temporary name was taken")
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(tfd, view) :]
            os.fchmod(tfd, mode)
            os.fsync(tfd)
        finally:
            os.close(tfd)
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        tmp = None
        os.fsync(dfd)
    except OSError as e:
        raise WriteError(f"writing in directory {dpath} failed: {e.strerror}") from None
    finally:
        if tmp is not None:
            import contextlib  # only on this failure path: not worth a module-level import

            with contextlib.suppress(OSError):  # the directory is gone: nothing left to clean
                os.unlink(tmp, dir_fd=dfd)
