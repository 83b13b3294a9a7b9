"""The persisted verdicts: where they live, when to trust them, how to write them.

A root process reads this file and acts on it, so it is trusted only when
nobody but root (or, for a reader that holds nothing beyond one uid, that
uid) could have written it: the safe-file rule of ``uidprobe.trust``
(written down there, gids and capabilities included), decided from the open
descriptor that is read, for the file and every directory above it.  The same rule applies to a path given
explicitly or through ``UIDPROBE_STORE``: an environment variable must not
let another user feed verdicts to root.

A store also carries a fingerprint of the kernel and C library it was
measured on; on any other it is stale and ignored.  Anything wrong with the
file (missing, unsafe, not a regular file, truncated, garbage, wrong types,
stale) makes it an absent store with a reason, never an exception.

This module uses only the standard library: reading a store must not load
the C engine or fork, and import must stay cheap.
"""

from __future__ import annotations

import math
import os
import time

from uidprobe import trust
from uidprobe.errors import StoreError
from uidprobe.names import OBSERVED, VERSION

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: see uidprobe/__init__.py
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "DEFAULT_PATH",
    "ENV_VAR",
    "FORMAT",
    "Loaded",
    "StoreError",
    "Stored",
    "check_writable",
    "current_fingerprint",
    "default_path",
    "load",
    "save",
]

DEFAULT_PATH = "/var/lib/uidprobe/verdicts"
ENV_VAR = "UIDPROBE_STORE"
FORMAT = 1
MAX_BYTES = 1 << 20  # a store is a few KiB; refuse to parse anything huge


# Plain classes, not dataclasses: reading a store happens at import time of
# uidprobe.config, and dataclasses (with inspect) would cost more than the read.


class Stored:
    """One probe's persisted result."""

    __slots__ = ("reason", "value", "verdict")

    def __init__(self, verdict: bool | None, value: int, reason: str) -> None:
        self.verdict = verdict
        self.value = value
        self.reason = reason

    def __repr__(self) -> str:
        return f"Stored({self.verdict!r}, {self.value!r}, {self.reason!r})"


class Loaded:
    """The outcome of reading a store: its contents, or why they were ignored."""

    __slots__ = ("created", "fingerprint", "path", "reason", "results")

    def __init__(
        self,
        path: str,
        results: dict[str, Stored] | None,  # None: ignored
        reason: str,  # why ignored, or "valid"
        fingerprint: dict[str, Any] | None = None,
        created: float | None = None,
    ) -> None:
        self.path = path
        self.results = results
        self.reason = reason
        self.fingerprint = fingerprint
        self.created = created

    @property
    def valid(self) -> bool:
        return self.results is not None

    def __repr__(self) -> str:
        return f"Loaded({self.path!r}, valid={self.valid}, reason={self.reason!r})"


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


def current_fingerprint() -> dict[str, str]:
    """What the verdicts depend on: kernel, C library, machine, uidprobe, format."""
    u = os.uname()
    return {
        "format": str(FORMAT),
        "kernel_release": u.release,
        "kernel_version": u.version,
        "libc": _libc(),
        "machine": u.machine,
        "system": u.sysname,
        "uidprobe": VERSION,
    }


# ------------------------------------------------------------ file format
#
#   uidprobe-store 1
#   created 1764009600.25
#   fingerprint kernel_release 6.18.44-fc-v595
#   ...
#   result USESETEUID true 1 every call behaved as required: ...
#   trace USESETEUID setresuid(1, 0, 0) [setup, must succeed]: ok; ...
#   end
#
# One record per line, the last field running to the end of the line, with
# backslash, newline and carriage return escaped.  Not JSON: the json module
# needs re, and importing both would cost more than uidprobe.config's whole
# import-time budget.  The "end" line makes a truncated file detectable.

MAGIC = "uidprobe-store"
_VERDICTS = {"true": True, "false": False, "none": None}
_VERDICT_WORDS = {v: k for k, v in _VERDICTS.items()}


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            nxt = text[i + 1 : i + 2]
            if nxt not in ("\\", "n", "r"):
                raise ValueError(f"bad escape \\{nxt}")
            out.append({"\\": "\\", "n": "\n", "r": "\r"}[nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _parse(text: str) -> tuple[dict[str, Stored], dict[str, Any], float] | str:
    """The store's contents, or why they are not acceptable."""
    lines = text.split("\n")
    if lines[0] != f"{MAGIC} {FORMAT}":
        if lines[0].startswith(MAGIC + " "):
            return f"format {lines[0][len(MAGIC) + 1 :]!r} is not {FORMAT}"
        return f"not a uidprobe store (first line {lines[0][:40]!r})"
    if len(lines) < 3 or lines[-1] != "" or lines[-2] != "end":
        return "no end line (truncated?)"
    created: float | None = None
    fp: dict[str, Any] = {}
    results: dict[str, Stored] = {}
    for number, line in enumerate(lines[1:-2], start=2):
        kind, _, rest = line.partition(" ")
        if kind == "created":
            try:
                created = float(rest)
            except ValueError:
                return f"line {number}: created is not a number"
            if not math.isfinite(created):
                return f"line {number}: created is not a finite number"
        elif kind == "fingerprint":
            key, _, value = rest.partition(" ")
            if not key or key in fp:
                return f"line {number}: missing or repeated fingerprint key"
            fp[key] = _unescape(value)
        elif kind == "result":
            parts = rest.split(" ", 3)
            if len(parts) != 4:
                return f"line {number}: a result needs a name, verdict, value and reason"
            name, word, value, reason = parts
            if name not in OBSERVED or name in results:
                return f"line {number}: unknown or repeated result {name!r}"
            if word not in _VERDICTS:
                return f"line {number}: {name}: verdict must be true, false or none"
            verdict = _VERDICTS[word]
            expected = 1 if verdict is True else 0  # never 1 without a True verdict
            if value != str(expected):
                return f"line {number}: {name}: value {value!r} does not match verdict {word}"
            results[name] = Stored(verdict, expected, _unescape(reason))
        elif kind == "trace":
            continue  # kept for people auditing the store, not read
        else:
            return f"line {number}: unknown record {kind[:20]!r}"
    if created is None:
        return "no created line"
    missing = [n for n in OBSERVED if n not in results]
    if missing:
        return f"no result for {missing[0]}"
    return results, fp, created


def _stale(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    for key in sorted(current):
        if stored.get(key) != current[key]:
            return f"stale: {key} is {current[key]!r} here but {stored.get(key)!r} in the store"
    return None


def load(path: str | None = None, reader: trust.Reader | None = None) -> Loaded:
    """Read and validate the store at ``path`` (default: ``default_path()``).

    ``reader`` is whose trust to apply; by default this thread's
    credentials.  Never raises: a store that cannot be trusted comes back
    with ``results=None`` and the reason.
    """
    path = path or default_path()
    try:
        raw, why = trust.read_trusted(path, max_bytes=MAX_BYTES, reader=reader)
        if raw is None:
            if why.startswith("absent"):
                why = "absent: no store at this path (run 'uidprobe configure' as root)"
            return Loaded(path, None, why)
        if not raw.strip():
            return Loaded(path, None, "invalid: the file is empty")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Loaded(path, None, "invalid: not UTF-8 text (corrupt?)")
        try:
            parsed = _parse(text)
        except ValueError as e:
            parsed = str(e)
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
    lines = [f"{MAGIC} {FORMAT}", f"created {time.time() if created is None else created!r}"]
    lines += [f"fingerprint {k} {_escape(v)}" for k, v in sorted(current_fingerprint().items())]
    for name, r in results.items():
        if name not in OBSERVED:
            continue
        lines.append(f"result {name} {_VERDICT_WORDS[r.verdict]} {r.value} {_escape(r.reason)}")
        lines += [f"trace {name} {_escape(t.describe())}" for t in r.trace]
    lines.append("end")
    return ("\n".join(lines) + "\n").encode()


def check_writable(path: str) -> None:
    """Raise StoreError now if ``save(path, ...)`` would refuse the path.

    ``configure`` calls this before probing, so an unsafe destination is
    refused before any child is forked.
    """
    try:
        trust.check_writable(path, make_dirs=True)
    except trust.WriteError as e:
        raise StoreError(str(e)) from None


def save(path: str, results: dict[str, Any]) -> None:
    """Write the store with ``trust.write_atomic`` (mode 0644; missing
    directories created 0755): readers see the old or the new file, never a
    partial one, and nothing is written through a symlink or into a
    directory chain that the safe-file rule would not trust."""
    try:
        trust.write_atomic(path, serialise(results), 0o644, make_dirs=True)
    except trust.WriteError as e:
        raise StoreError(str(e)) from None
