"""Where config values come from, in order of preference.

1. A valid store (written by ``uidprobe configure``): no C extension, no fork.
2. No valid store, but this process may switch ids: probe live, in memory
   (nothing is written at import), within LIVE_TIMEOUT seconds per child:
   about 2 s in all at worst (ten children: nine probes and one feature
   check), when every child hangs; a child that overruns is killed and its
   verdict is undetermined, so its value is the safe 0.
3. Otherwise every value is 0 ("default"), with the reason.

Never 1 without evidence, and never an exception because of a store.
"""

from __future__ import annotations

import time

from uidprobe import store
from uidprobe.names import OBSERVED

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: see uidprobe/__init__.py
if TYPE_CHECKING:
    from typing import Literal

    #: where the values came from
    Source = Literal["store", "probe", "default"]

__all__ = ["LIVE_TIMEOUT", "Snapshot", "defaults", "resolve"]

#: Seconds each child of an import-time live probe may take (a healthy one
#: takes well under a millisecond); the whole live probe is bounded by ten of them.
LIVE_TIMEOUT = 0.2


class Snapshot:
    """The config values and their provenance (a plain class: see store.py)."""

    __slots__ = ("loaded", "reason", "reasons", "source", "values", "verdicts")

    def __init__(
        self,
        values: dict[str, int],
        source: Source,
        reason: str,  # one line: why this source
        loaded: store.Loaded,  # what reading the store found, valid or not
        verdicts: dict[str, bool | None],
        reasons: dict[str, str],
    ) -> None:
        self.values = values
        self.source = source
        self.reason = reason
        self.loaded = loaded
        self.verdicts = verdicts
        self.reasons = reasons

    @property
    def age(self) -> float | None:
        """Seconds since the store was written (None unless source is store)."""
        if self.source != "store" or self.loaded.created is None:
            return None
        return max(0.0, time.time() - self.loaded.created)


def _privileged() -> str | None:
    """None when this process can probe, else why not (no fork, no C)."""
    from uidprobe.ids import Family
    from uidprobe.process import read_state

    return read_state().cannot_switch(Family.UID)


def resolve(path: str | None = None, live: bool = True) -> Snapshot:
    """The config values for this process (store at ``path`` or the default).

    ``live=False`` never probes: a missing store gives defaults (what
    ``uidprobe export --no-probe`` and tests of the fallback use).
    """
    loaded = store.load(path)
    if loaded.results is not None:
        return Snapshot(
            values={n: r.value for n, r in loaded.results.items()},
            source="store",
            reason=f"read from {loaded.path}",
            loaded=loaded,
            verdicts={n: r.verdict for n, r in loaded.results.items()},
            reasons={n: r.reason for n, r in loaded.results.items()},
        )
    why_not = _privileged() if live else "live probing was not requested"
    if why_not is None:
        from uidprobe import suite
        from uidprobe.engine import Engine

        try:
            results = suite.run(list(OBSERVED), timeout=LIVE_TIMEOUT, engine=Engine())
        except Exception as e:  # import must never fail because of the environment
            why_not = f"live probing failed: {type(e).__name__}: {e}"
    if why_not is None:
        return Snapshot(
            values={n: r.value for n, r in results.items()},
            source="probe",
            reason=f"probed live in memory; store {loaded.reason}",
            loaded=loaded,
            verdicts={n: r.verdict for n, r in results.items()},
            reasons={n: r.reason for n, r in results.items()},
        )
    return defaults(f"store {loaded.reason}; cannot probe: {why_not}", loaded)


def defaults(why: str, loaded: store.Loaded | None = None) -> Snapshot:
    """Every value 0 (the safe answer), saying why."""
    return Snapshot(
        values=dict.fromkeys(OBSERVED, 0),
        source="default",
        reason=why,  # every caller says "defaults" or "every value 0" itself
        loaded=loaded or store.Loaded(store.default_path(), None, "not read"),
        verdicts=dict.fromkeys(OBSERVED),
        reasons=dict.fromkeys(OBSERVED, "no valid store and no live probe"),
    )
