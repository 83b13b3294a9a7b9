"""uidprobe: how do seteuid, setreuid and setuid really behave here?

Each probe runs in a forked child that performs the calls and reads every id
back; the parent turns that trace into a verdict: True (works), False (does
not), or None (this process could not test, with the reason).

    >>> import uidprobe
    >>> r = uidprobe.probe("USESETEUID")
    >>> r.verdict, r.reason            # doctest: +SKIP
    (True, 'every call behaved as required: ...')

Importing this package loads no C extension and forks nothing; probing does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import overload

from uidprobe.verdicts import Result

__all__ = ["NAMES", "Result", "__version__", "probe"]
__version__ = "0.1.0"


def _names() -> tuple[str, ...]:
    from uidprobe.suite import NAMES

    return NAMES


NAMES: tuple[str, ...]


def __getattr__(name: str) -> object:
    # NAMES is computed on first use so that `import uidprobe` stays cheap.
    if name == "NAMES":
        return _names()
    raise AttributeError(f"module 'uidprobe' has no attribute {name!r}")


@overload
def probe(
    name: None = None,
    *,
    uids: tuple[int, int, int] | None = None,
    gids: tuple[int, int, int] | None = None,
    timeout: float = 2.0,
) -> Mapping[str, Result]: ...


@overload
def probe(
    name: str,
    *,
    uids: tuple[int, int, int] | None = None,
    gids: tuple[int, int, int] | None = None,
    timeout: float = 2.0,
) -> Result: ...


def probe(
    name: str | None = None,
    *,
    uids: tuple[int, int, int] | None = None,
    gids: tuple[int, int, int] | None = None,
    timeout: float = 2.0,
) -> Mapping[str, Result] | Result:
    """Run the probes now and return their results.

    With no ``name``: a mapping from every probe name to its Result.  With a
    name: that one Result (ValueError for an unknown name).  ``uids`` and
    ``gids`` are the ordinary ids (U, A, B) the children switch between; by
    default ids this process can really switch to are chosen.  Each child is
    killed after ``timeout`` seconds.  Never raises because the process lacks
    privilege: the verdicts are then None with the reason.
    """
    from uidprobe import suite

    if name is None:
        return suite.run(None, uids=uids, gids=gids, timeout=timeout)
    if not isinstance(name, str):
        raise TypeError(f"probe name must be a str, not {type(name).__name__}")
    return suite.run([name], uids=uids, gids=gids, timeout=timeout)[name]
