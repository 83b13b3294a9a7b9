"""The model's file formats: JSON (versioned schema), DOT, and comparing two models."""

from __future__ import annotations

import json
from typing import Any

from uidprobe.errors import ModelError
from uidprobe.ids import Family
from uidprobe.model.data import Model, State, Transition
from uidprobe.model.summary import changes

__all__ = ["SCHEMA", "VERSION", "diff", "from_json", "load", "to_dot"]

SCHEMA = "uidprobe-model"
VERSION = 1


def from_json(doc: Any) -> Model:
    """A Model from parsed JSON; ModelError, saying what is wrong, when it is not one."""
    if not isinstance(doc, dict):
        raise ModelError(f"malformed model: the file holds {_json_kind(doc)}, not a JSON object")
    if doc.get("schema") != SCHEMA or doc.get("version") != VERSION:
        raise ModelError(f"not a {SCHEMA} version {VERSION} document")
    where = "ids"  # the part being read, for the message
    try:
        ids = {"A": int(doc["ids"]["A"]), "B": int(doc["ids"]["B"])}
        where = "states"
        states = {_state(s["state"]): s["reason"] for s in doc["states"]}
        where = "transitions"
        transitions = []
        for i, t in enumerate(doc["transitions"]):
            where = f"transitions[{i}]"
            transitions.append(
                Transition(
                    start=_state(t["from"]),
                    call=str(t["call"]),
                    args=tuple(str(a) for a in t["args"]),
                    ret=t["ret"],
                    errno=t["errno"],
                    end=None if t["to"] is None else _state(t["to"]),
                    note=t.get("note"),
                )
            )
        where = "family"
        family = Family(doc["family"])
        where = "fingerprint"
        fingerprint = dict(doc["fingerprint"])
    except KeyError as e:
        key = e.args[0] if e.args else where
        inside = "" if key == where else f"{where}: "
        raise ModelError(f"malformed model: {inside}no {key!r}") from None
    except (AttributeError, TypeError, ValueError, IndexError):
        raise ModelError(f"malformed model: {where} is not what the {SCHEMA} schema describes") from None
    return Model(family=family, ids=ids, fingerprint=fingerprint, states=states, transitions=tuple(transitions))


def _json_kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _state(raw: Any) -> State:
    r, e, s = (str(x) for x in raw)
    return (r, e, s)


def load(path: str) -> Model:
    """Read a saved model.  OSError if the file cannot be read (FileNotFoundError
    if it is absent); ModelError, naming the file, if it is not a model."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return from_json(json.loads(text))
    except ValueError as e:  # ModelError is a ValueError, and so is bad JSON
        why = str(e) if isinstance(e, ModelError) else f"not JSON: {e}"
        raise ModelError(f"{path}: {why}") from None


def diff(a: Model, b: Model) -> list[str]:
    """One line per transition whose result differs between two models."""
    if a.family != b.family:
        return [f"families differ: {a.family.value} and {b.family.value}"]
    la, lb = a.lookup(), b.lookup()
    lines = []
    for key in sorted(set(la) | set(lb)):
        ta, tb = la.get(key), lb.get(key)
        ra = ta.result() if ta else "absent"
        rb = tb.result() if tb else "absent"
        if ra != rb:
            start, call, args = key
            lines.append(f"from ({','.join(start)}) {call}({', '.join(args)}): {ra}  |  {rb}")
    return lines


def to_dot(model: Model) -> str:
    """Graphviz DOT: established states, and the calls that move between them."""
    edges: dict[tuple[State, State], list[str]] = {}
    for t in model.transitions:
        if changes(t):
            assert t.end is not None
            edges.setdefault((t.start, t.end), []).append(t.describe())
    name = f"uidprobe_{model.family.value}_model"
    out = [f"digraph {name} {{", "  rankdir=LR;", '  node [shape=box, fontname="monospace"];']
    for st, why in model.states.items():
        style = (
            ", style=dashed, color=gray"
            if why is not None
            else (', style=filled, fillcolor="#f4cccc"' if "0" in st else "")
        )
        out.append(f'  "{",".join(st)}" [label="({",".join(st)})"{style}];')
    for (a, b), labels in sorted(edges.items()):
        shown = labels if len(labels) <= 4 else [*labels[:3], f"+{len(labels) - 3} more"]
        label = "\\n".join(shown)
        out.append(f'  "{",".join(a)}" -> "{",".join(b)}" [label="{label}"];')
    out.append("}")
    return "\n".join(out) + "\n"
