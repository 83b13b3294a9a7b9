"""Ids: their shapes, their limits, and the ids a probe switches between.

Kept free of heavy imports: the store and config path must stay cheap.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Optional

__all__ = ["MAX_ID", "PREFERRED_IDS", "Family", "IdPattern", "IdSet", "IdTriple", "validate_ids"]

#: The largest id: (uid_t)-1 means "unchanged" to the set*id calls and is never an id.
MAX_ID = 0xFFFFFFFE
#: Where the default U, A and B are looked for first.  Any process of a
#: probe id may signal the probe children (kill(2) allows it), so the ids
#: must be nobody's: these are allocated by no distribution (unused in
#: systemd's ranges, reserved in Debian's), lie below the overflow id 65534
#: and within the 65536 ids a container's map usually covers.  An id is
#: taken only if no running process holds it and no passwd (group) entry
#: names it; failing three of these, every mapped id from 1 up is tried.
#: (sendmail's test programs used 1 and 2: daemon and bin, whose processes
#: could disturb the probes.)
PREFERRED_IDS = range(65520, 65534)


class Family(str, enum.Enum):
    """Which ids: user ids or group ids."""

    UID = "uid"
    GID = "gid"


class IdTriple(NamedTuple):
    """Real, effective and saved id, as read back.  ``saved`` is None where
    the C library cannot report it (no getresuid): it is then inferred."""

    real: int
    effective: int
    saved: Optional[int]  # noqa: UP045 - NamedTuple fields are evaluated at run time on 3.9

    def ints(self) -> tuple[int, int, int]:
        """All three, for a call that sets them; ValueError if saved is unknown."""
        if self.saved is None:
            raise ValueError(f"the saved id of {tuple(self)} is unknown here")
        return (self.real, self.effective, self.saved)


#: What a triple must be; None in a position: not checked.
IdPattern = tuple[Optional[int], Optional[int], Optional[int]]


class IdSet(NamedTuple):
    """The concrete ids behind the symbols U (the invoking user), A and B."""

    user: int
    a: int
    b: int


def validate_ids(ids: tuple[int, ...], kind: str, names: tuple[str, ...] = ("U", "A", "B")) -> None:
    """Reject ids that cannot mean distinct ordinary users, one per name."""
    count = {2: "two", 3: "three"}.get(len(names), str(len(names)))
    if len(ids) != len(names):
        raise ValueError(f"{kind}s: need exactly {count} ids ({', '.join(names)}), got {len(ids)}")
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"{kind}s: ids must be integers, got {i!r}")
        if not 1 <= i <= MAX_ID:
            raise ValueError(f"{kind}s: {i} is not a usable id (must be 1..{MAX_ID}; 0 is root)")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{kind}s: the {count} ids must differ, got {ids}")
