"""Compile-time-style values, computed once at first import.

    from uidprobe import config
    if config.USESETEUID: ...

Each name is 1 when the probe's verdict is True, else 0 (no, or
undetermined).  ``SOURCE`` says where the values came from: "store" (the file
``uidprobe configure`` wrote; reading it loads no C extension and forks
nothing), "probe" (no valid store, so this privileged process probed in
memory; nothing was written) or "default" (neither: all 0).  ``REASON`` says
why, including why a store was ignored.
"""

from __future__ import annotations

from uidprobe.resolve import Snapshot, defaults, resolve


def _resolve() -> Snapshot:
    # Nothing an environment can do may make this import raise: not a
    # hostile store, not a failed fork, not a tight memory limit.
    try:
        return resolve()
    except Exception as e:
        return defaults(f"resolving failed: {type(e).__name__}: {e}")


_snapshot = _resolve()

USESETEUID: int = _snapshot.values["USESETEUID"]
HASSETREUID: int = _snapshot.values["HASSETREUID"]
SETUID_PERMANENT: int = _snapshot.values["SETUID_PERMANENT"]
HASSETRESUID: int = _snapshot.values["HASSETRESUID"]
USESETEGID: int = _snapshot.values["USESETEGID"]
HASSETREGID: int = _snapshot.values["HASSETREGID"]
SETGID_PERMANENT: int = _snapshot.values["SETGID_PERMANENT"]
HASSETRESGID: int = _snapshot.values["HASSETRESGID"]
SETGROUPS_CAN_CLEAR: int = _snapshot.values["SETGROUPS_CAN_CLEAR"]
THREAD_CREDENTIALS: int = _snapshot.values["THREAD_CREDENTIALS"]

#: "store", "probe" or "default"
SOURCE: str = _snapshot.source
#: one line: why this source (and why a store was ignored)
REASON: str = _snapshot.reason
#: the store's path, whether or not it was used
STORE_PATH: str = _snapshot.loaded.path
#: the store's fingerprint (kernel, C library, machine, versions), or None
FINGERPRINT: dict[str, object] | None = _snapshot.loaded.fingerprint if SOURCE == "store" else None

#: every value by name, plus SOURCE: what get_config_vars() returns
VARS: dict[str, int | str | None] = {**_snapshot.values, "SOURCE": SOURCE}


#: Set in the environment (to anything but "" or "0"), makes define_macros() strict by default.
STRICT_ENV = "UIDPROBE_STRICT"


def check_measured() -> None:
    """Raise UidprobeError (one line, with the reason) when the values are
    defaults (``SOURCE == "default"``): no valid store and no live probe."""
    if SOURCE == "default":
        from uidprobe.errors import UidprobeError

        raise UidprobeError(f"uidprobe: strict: no measured values, only defaults: {REASON}")


def define_macros(strict: bool | None = None) -> list[tuple[str, str | None]]:
    """``(name, "1")`` for each value that is 1; zeros stay undefined.

    When the values are defaults: with ``strict`` (default: whether
    ``$UIDPROBE_STRICT`` is set) raise UidprobeError; otherwise warn once per
    call with a UserWarning that says why.
    """
    import os

    if strict is None:
        strict = os.environ.get(STRICT_ENV, "") not in ("", "0")
    if strict:
        check_measured()
    elif SOURCE == "default":
        import warnings

        warnings.warn(f"uidprobe: every value is 0 (defaults, not measured): {REASON}", UserWarning, stacklevel=3)
    return [(n, "1") for n, v in _snapshot.values.items() if v]
