"""The persisted verdicts: where they live, when to trust them, how to write them.

A root process reads this file and acts on it, so it is trusted only when
nobody but root (or the reading user) could have written it: the file and
every directory above it must be owned by root or the current effective user
and not writable by group or others (sendmail's safe-file rule).  A
directory writable by others is accepted only if it is root's and sticky
(like /tmp), where others cannot rename or delete our entries.  The same
rule applies to a path given explicitly or through ``UIDPROBE_STORE``: an
environment variable must not let another user feed verdicts to root.

A store also carries a fingerprint of the kernel and C library it was
measured on; on any other it is stale and ignored.  Anything wrong with the
file (missing, unsafe, truncated, garbage, wrong types, stale) makes it an
absent store with a reason, never an exception.

This module uses only the standard library: reading a store must not load
the C engine or fork (invariant 5).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from uidprobe.names import OBSERVED, VERSION

__all__ = [
    "DEFAULT_PATH",
    "ENV_VAR",
    "FORMAT",
    "Loaded",
    "StoreError",
    "Stored",
    "current_fingerprint",
    "default_path",
    "load",
    "save",
    "unsafe_reason",
]

DEFAULT_PATH = "/var/lib/uidprobe/verdicts.json"
ENV_VAR = "UIDPROBE_STORE"
FORMAT = 1
MAX_BYTES = 1 << 20  # a store is a few KiB; refuse to parse anything huge


class StoreError(OSError):
    """The store could not be written (the reason is in the message)."""


@dataclass(frozen=True)
class Stored:
    """One probe's persisted result."""

    verdict: bool | None
    value: int
    reason: str


@dataclass(frozen=True)
class Loaded:
    """The outcome of reading a store: its contents, or why they were ignored."""

    path: str
    results: dict[str, Stored] | None  # None: ignored
    reason: str  # why ignored, or "valid"
    fingerprint: dict[str, Any] | None = None
    created: float | None = None

    @property
    def valid(self) -> bool:
        return self.results is not None


def default_path() -> str:
    """``$UIDPROBE_STORE`` if set, else DEFAULT_PATH (under /var/lib: machine state)."""
    return os.environ.get(ENV_VAR) or DEFAULT_PATH


def _libc() -> str:
    try:
        value = os.confstr("CS_GNU_LIBC_VERSION")  # fast: no file reads
    except (ValueError, OSError):
        value = None
    if value:
        return value
    import platform  # slower (scans the executable); only off glibc

    name, version = platform.libc_ver()
    return f"{name} {version}".strip() or "unknown"


def current_fingerprint() -> dict[str, Any]:
    """What the verdicts depend on: kernel, C library, machine, uidprobe, format."""
    u = os.uname()
    return {
        "format": FORMAT,
        "kernel_release": u.release,
        "kernel_version": u.version,
        "libc": _libc(),
        "machine": u.machine,
        "system": u.sysname,
        "uidprobe": VERSION,
    }


# ------------------------------------------------------------------- safety


def _owner_ok(st: os.stat_result, euid: int) -> bool:
    return st.st_uid in (0, euid)


def unsafe_reason(path: str, euid: int | None = None) -> str | None:
    """Why ``path`` must not be trusted, or None when it is safe to read.

    Checks the file and every directory from it up to /, after resolving
    symlinks (the resolved path is what gets opened).
    """
    euid = os.geteuid() if euid is None else euid
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return None  # absence is reported by the reader, not as "unsafe"
    except OSError as e:
        return f"cannot stat {real}: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{real} is not a regular file"
    if not _owner_ok(st, euid):
        return f"{real} is owned by uid {st.st_uid}, not root or uid {euid}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{real} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    d = os.path.dirname(real)
    while True:
        try:
            ds = os.stat(d)
        except OSError as e:
            return f"cannot stat {d}: {e.strerror}"
        if not _owner_ok(ds, euid):
            return f"directory {d} is owned by uid {ds.st_uid}, not root or uid {euid}"
        mode = stat.S_IMODE(ds.st_mode)
        if mode & stat.S_IWOTH and not (mode & stat.S_ISVTX and ds.st_uid == 0):
            return f"directory {d} is writable by others (mode {mode:04o})"
        if mode & stat.S_IWGRP and not (mode & stat.S_ISVTX and ds.st_uid == 0):
            return f"directory {d} is writable by group (mode {mode:04o})"
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


# --------------------------------------------------------------- reading


def _parse(data: Any) -> tuple[dict[str, Stored], dict[str, Any], float] | str:
    """The store's contents, or why they are not acceptable."""
    if not isinstance(data, dict):
        return f"top level is {type(data).__name__}, not an object"
    fp, created, results = data.get("fingerprint"), data.get("created"), data.get("results")
    if not isinstance(fp, dict):
        return "fingerprint is missing or not an object"
    if isinstance(created, bool) or not isinstance(created, (int, float)):
        return "created is missing or not a number"
    if not isinstance(results, dict):
        return "results is missing or not an object"
    out: dict[str, Stored] = {}
    for name in OBSERVED:
        item = results.get(name)
        if not isinstance(item, dict):
            return f"no result for {name}"
        verdict, value, reason = item.get("verdict"), item.get("value"), item.get("reason")
        if verdict not in (True, False, None):
            return f"{name}: verdict must be true, false or null"
        expected = 1 if verdict is True else 0  # never 1 without a True verdict
        if isinstance(value, bool) or value != expected:
            return f"{name}: value {value!r} does not match verdict {verdict!r}"
        if not isinstance(reason, str):
            return f"{name}: reason is not a string"
        out[name] = Stored(verdict, int(value), reason)
    return out, fp, float(created)


def _stale(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    for key in sorted(current):
        if stored.get(key) != current[key]:
            return f"stale: {key} is {current[key]!r} here but {stored.get(key)!r} in the store"
    return None


def load(path: str | None = None, euid: int | None = None) -> Loaded:
    """Read and validate the store at ``path`` (default: ``default_path()``).

    Never raises: a store that cannot be trusted comes back with
    ``results=None`` and the reason.
    """
    path = path or default_path()
    try:
        why = unsafe_reason(path, euid)
        if why:
            return Loaded(path, None, f"unsafe: {why}")
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(os.path.realpath(path), flags)
        except FileNotFoundError:
            return Loaded(path, None, "absent: no store at this path (run 'uidprobe configure' as root)")
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            return Loaded(path, None, f"invalid: larger than {MAX_BYTES} bytes")
        if not raw.strip():
            return Loaded(path, None, "invalid: the file is empty")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            return Loaded(path, None, f"invalid: not JSON (truncated or corrupt?): {e}")
        parsed = _parse(data)
        if isinstance(parsed, str):
            return Loaded(path, None, f"invalid: {parsed}")
        results, fp, created = parsed
        stale = _stale(fp, current_fingerprint())
        if stale:
            return Loaded(path, None, stale, fp, created)
        return Loaded(path, results, "valid", fp, created)
    except Exception as e:  # import must never fail because of a store
        return Loaded(path, None, f"unreadable: {type(e).__name__}: {e}")


# --------------------------------------------------------------- writing


def serialise(results: dict[str, Any], created: float | None = None) -> bytes:
    """The store's bytes for ``results`` (name -> Result-like objects)."""
    doc = {
        "created": time.time() if created is None else created,
        "fingerprint": current_fingerprint(),
        "results": {
            name: {
                "verdict": r.verdict,
                "value": r.value,
                "reason": r.reason,
                "trace": [line.describe() for line in r.trace],
            }
            for name, r in results.items()
            if name in OBSERVED
        },
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def save(path: str, results: dict[str, Any]) -> None:
    """Write the store atomically: temp file in the same directory, fsync,
    rename, fsync the directory.  Readers see the old or the new file, never
    a partial one.  Mode 0644; missing directories are created 0755."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".verdicts.", suffix=".tmp", dir=d)
    except OSError as e:
        raise StoreError(e.errno, f"cannot write in {d}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(serialise(results))
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StoreError(e.errno, f"cannot write {path}: {e.strerror}") from None
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
