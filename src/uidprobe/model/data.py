"""The model's data: states, transitions, and the symbols they are written in."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from uidprobe.engine import Op
from uidprobe.ids import Family
from uidprobe.names import MODEL_IDS

__all__ = [
    "ARG_SYMBOLS",
    "DEFAULT_A",
    "DEFAULT_B",
    "SYMBOLS",
    "Model",
    "State",
    "Transition",
    "all_calls",
    "all_states",
    "num",
    "sym",
]

#: The ids behind A and B unless the caller chooses others.
DEFAULT_A, DEFAULT_B = MODEL_IDS
SYMBOLS = ("0", "A", "B")
ARG_SYMBOLS = ("-1", "0", "A", "B")
State = tuple[str, str, str]

_CALLS = {
    Family.UID: (Op.SETUID, Op.SETEUID, Op.SETREUID, Op.SETRESUID),
    Family.GID: (Op.SETGID, Op.SETEGID, Op.SETREGID, Op.SETRESGID),
}
_ARITY = {
    Op.SETUID: 1,
    Op.SETEUID: 1,
    Op.SETREUID: 2,
    Op.SETRESUID: 3,
    Op.SETGID: 1,
    Op.SETEGID: 1,
    Op.SETREGID: 2,
    Op.SETRESGID: 3,
}


@dataclass(frozen=True)
class Transition:
    start: State
    call: str
    args: tuple[str, ...]
    ret: int | None
    errno: str | None
    end: State | None
    note: str | None = None

    @property
    def key(self) -> tuple[State, str, tuple[str, ...]]:
        return (self.start, self.call, self.args)

    def describe(self) -> str:
        return f"{self.call}({', '.join(self.args)})"

    def result(self) -> str:
        if self.ret is None:
            return f"not run ({self.note})"
        head = "ok" if self.ret == 0 else f"failed {self.errno}"
        return f"{head} -> ({','.join(self.end or ())})"


@dataclass(frozen=True)
class Model:
    family: Family
    ids: dict[str, int]
    fingerprint: dict[str, Any]
    states: dict[State, str | None]  # state -> None if established, else why not
    transitions: tuple[Transition, ...]

    def to_json(self) -> dict[str, Any]:
        from uidprobe.model.formats import SCHEMA, VERSION

        return {
            "schema": SCHEMA,
            "version": VERSION,
            "family": self.family.value,
            "ids": self.ids,
            "fingerprint": self.fingerprint,
            "states": [{"state": list(s), "established": why is None, "reason": why} for s, why in self.states.items()],
            "transitions": [
                {
                    "from": list(t.start),
                    "call": t.call,
                    "args": list(t.args),
                    "ret": t.ret,
                    "errno": t.errno,
                    "to": None if t.end is None else list(t.end),
                    "note": t.note,
                }
                for t in self.transitions
            ],
        }

    def lookup(self) -> dict[tuple[State, str, tuple[str, ...]], Transition]:
        return {t.key: t for t in self.transitions}


def all_states() -> list[State]:
    return [(r, e, s) for r in SYMBOLS for e in SYMBOLS for s in SYMBOLS]


def all_calls(family: Family) -> list[tuple[Op, tuple[str, ...]]]:
    return [(op, args) for op in _CALLS[Family(family)] for args in itertools.product(ARG_SYMBOLS, repeat=_ARITY[op])]


def num(sym: str, ids: dict[str, int]) -> int:
    return {"-1": -1, "0": 0, "A": ids["A"], "B": ids["B"]}[sym]


def sym(value: int | None, ids: dict[str, int]) -> str:
    if value is None:
        return "?"
    names = {0: "0", ids["A"]: "A", ids["B"]: "B"}
    return names.get(value, str(value))
