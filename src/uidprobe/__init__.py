"""uidprobe: how do seteuid, setreuid and setuid really behave here?

Each probe runs in a forked child that performs the calls and reads every id
back; the parent turns that trace into a verdict: True (works), False (does
not), or None (this process could not test, with the reason).

    >>> import uidprobe
    >>> r = uidprobe.probe("USESETEUID")
    >>> r.verdict, r.reason            # doctest: +SKIP
    (True, 'every call behaved as required: ...')

Compile-time-style values, from the store written by ``uidprobe configure``:

    >>> from uidprobe import config
    >>> config.USESETEUID, config.SOURCE  # doctest: +SKIP
    (1, 'store')

Importing this package reads nothing, loads no C extension and forks nothing.
"""

from __future__ import annotations

from uidprobe.names import DEFAULT_TIMEOUT, VERSION

__version__ = VERSION

# Not `from typing import TYPE_CHECKING`: importing typing would add
# milliseconds to every `import uidprobe.config` (mypy treats the name alike).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import overload

    from uidprobe.verdicts import Result

__all__ = [
    "NAMES",
    "EngineError",
    "InvalidTargetError",
    "ModelError",
    "NoMechanismError",
    "PrivilegeError",
    "Result",
    "StoreError",
    "UidprobeError",
    "UsageError",
    "VerificationError",
    "WriteError",
    "__version__",
    "define_macros",
    "get_config_var",
    "get_config_vars",
    "probe",
]

NAMES: tuple[str, ...]

if TYPE_CHECKING:
    from uidprobe.errors import (
        EngineError,
        InvalidTargetError,
        ModelError,
        NoMechanismError,
        PrivilegeError,
        StoreError,
        UidprobeError,
        UsageError,
        VerificationError,
        WriteError,
    )


def __getattr__(name: str) -> object:
    # Loaded on first use so that `import uidprobe` (and uidprobe.config) stay cheap.
    if name == "NAMES":
        from uidprobe.suite import NAMES

        return NAMES
    if name == "Result":
        from uidprobe.verdicts import Result

        return Result
    if name.endswith("Error"):
        from uidprobe import errors

        if name in errors.__all__:
            return getattr(errors, name)
    raise AttributeError(f"module 'uidprobe' has no attribute {name!r}")


if TYPE_CHECKING:

    @overload
    def probe(
        name: None = None,
        *,
        uids: tuple[int, int, int] | None = None,
        gids: tuple[int, int, int] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Mapping[str, Result]: ...

    @overload
    def probe(
        name: str,
        *,
        uids: tuple[int, int, int] | None = None,
        gids: tuple[int, int, int] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Result: ...


def probe(
    name: str | None = None,
    *,
    uids: tuple[int, int, int] | None = None,
    gids: tuple[int, int, int] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Mapping[str, Result] | Result:
    """Run the probes now and return their results.

    With no ``name``: a mapping from every probe name to its Result.  With a
    name: that one Result (ValueError for an unknown name).  ``uids`` and
    ``gids`` are the ordinary ids (U, A, B) the children switch between; by
    default, ids this process can really switch to and nobody else holds
    (see ``uidprobe.process.IdsInUse``).  Each child is killed after
    ``timeout`` seconds; a child disturbed from outside runs once more
    (``Result.disturbed`` if it is disturbed again).  Never raises because
    the process lacks privilege: the verdicts are then None with the reason.
    """
    from uidprobe import suite

    if name is None:
        return suite.run(None, uids=uids, gids=gids, timeout=timeout)
    if not isinstance(name, str):
        raise TypeError(f"probe name must be a str, not {type(name).__name__}")
    return suite.run([name], uids=uids, gids=gids, timeout=timeout)[name]


def get_config_vars() -> dict[str, int | str | None]:
    """Every config value, shaped like ``sysconfig.get_config_vars()``.

    The verdict names map to 1 or 0; ``SOURCE`` says where they came from
    ("store", "probe" or "default").  Computed once, when ``uidprobe.config``
    is first imported.
    """
    from uidprobe import config

    return dict(config.VARS)


def get_config_var(name: str) -> int | str | None:
    """One config value; None for an unknown name, as in ``sysconfig``."""
    from uidprobe import config

    return config.VARS.get(name)


def define_macros(strict: bool | None = None) -> list[tuple[str, str | None]]:
    """``setuptools.Extension(define_macros=...)`` pairs for the values that are 1.

    Zero values are left undefined (the autoconf convention), so C code can
    test them with ``#ifdef`` or ``#if``.

    When no value was measured (no valid store, and this process could not
    probe: ``get_config_var("SOURCE") == "default"``), ``strict=True`` raises
    ``UidprobeError`` with one line naming the reason; otherwise a
    ``UserWarning`` says so and every value is 0.  ``strict`` defaults to
    whether ``$UIDPROBE_STRICT`` is set (to anything but "" or "0"), so a
    distribution's build can insist without editing setup.py.
    """
    from uidprobe import config

    return config.define_macros(strict)
