"""The full transition model: every id state, every call, measured here.

Sendmail's tests walk three paths; "Setuid Demystified" (Chen, Wagner, Dean,
USENIX Security 2002) built the whole automaton by forking a child per
(state, call).  This module does the same on the machine at hand:

* uid model: every state (real, effective, saved) over the ids {0, A, B}
  (27 states) and every call setuid(x), seteuid(x), setreuid(x, y),
  setresuid(x, y, z) with x, y, z in {-1, 0, A, B} (88 calls): 2,376
  transitions.  Each runs in its own child, from a state established with
  setresuid and confirmed by read-back; a state that cannot be established
  is recorded as such.
* gid model (``family="gid"``): the same over gids with the gid calls, made
  by a process whose uids are all A: with euid 0 (CAP_SETGID) every gid
  call would succeed and the automaton would say nothing.

JSON schema (``"schema": "uidprobe-model", "version": 1``)::

    {
      "schema": "uidprobe-model", "version": 1,
      "family": "uid" | "gid",
      "ids": {"A": <int>, "B": <int>},           # what the symbols meant here
      "fingerprint": {...},                      # as in the store
      "states": [{"state": ["0","A","B"], "established": true, "reason": null}, ...],
      "transitions": [
        {"from": ["0","0","0"], "call": "setuid", "args": ["A"],
         "ret": 0, "errno": null, "to": ["A","A","A"], "note": null}, ...
      ]
    }

Ids in ``from``/``to``/``args`` are symbols: "0", "A", "B", "-1" (args only),
"?" (saved id unreadable on this platform) or the decimal id for anything
else.  ``ret``/``to`` are null when the state could not be established or
the child did not finish; ``note`` then says why.
"""

from __future__ import annotations

import errno as errno_mod
import itertools
import json
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from uidprobe import engine, scenarios, verdicts
from uidprobe.engine import Op, Outcome, Record, Step
from uidprobe.scenarios import IdSet

__all__ = [
    "SCHEMA",
    "VERSION",
    "Model",
    "ModelError",
    "Transition",
    "build",
    "derive_verdicts",
    "diff",
    "load",
    "summary",
    "to_dot",
]

SCHEMA = "uidprobe-model"
VERSION = 1
SYMBOLS = ("0", "A", "B")
ARG_SYMBOLS = ("-1", "0", "A", "B")
State = tuple[str, str, str]

_CALLS = {
    "uid": (Op.SETUID, Op.SETEUID, Op.SETREUID, Op.SETRESUID),
    "gid": (Op.SETGID, Op.SETEGID, Op.SETREGID, Op.SETRESGID),
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


class ModelError(ValueError):
    """A model file is not a model of this schema."""


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
    family: str
    ids: dict[str, int]
    fingerprint: dict[str, Any]
    states: dict[State, str | None]  # state -> None if established, else why not
    transitions: tuple[Transition, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "family": self.family,
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


def all_calls(family: str) -> list[tuple[Op, tuple[str, ...]]]:
    return [(op, args) for op in _CALLS[family] for args in itertools.product(ARG_SYMBOLS, repeat=_ARITY[op])]


def _num(sym: str, ids: dict[str, int]) -> int:
    return {"-1": -1, "0": 0, "A": ids["A"], "B": ids["B"]}[sym]


def _sym(value: int | None, ids: dict[str, int]) -> str:
    if value is None:
        return "?"
    names = {0: "0", ids["A"]: "A", ids["B"]: "B"}
    return names.get(value, str(value))


def _setup(family: str, state: State, ids: dict[str, int], feats: engine.Features) -> list[Step]:
    r, e, s = (_num(x, ids) for x in state)
    if family == "uid":
        if feats.setresuid and feats.setresuid_works:
            return [Step(Op.SETRESUID, (r, e, s))]
        # setreuid(r, s) gives (r, s, s); seteuid(e) then needs privilege or e in {r, s}.
        return [Step(Op.SETREUID, (r, s)), Step(Op.SETEUID, (e,))]
    a = ids["A"]
    gid_steps = (
        [Step(Op.SETRESGID, (r, e, s))]
        if feats.setresgid and feats.setresgid_works
        else [Step(Op.SETREGID, (r, s)), Step(Op.SETEGID, (e,))]
    )
    drop = Step(Op.SETRESUID, (a, a, a)) if feats.setresuid and feats.setresuid_works else Step(Op.SETREUID, (a, a))
    return [*gid_steps, drop]


def _established(family: str, state: State, ids: dict[str, int], out: Outcome, nsetup: int) -> str | None:
    """None when the child confirmed the start state by read-back, else why not."""
    if len(out.records) < nsetup:
        return out.describe_end()
    want = tuple(_num(x, ids) for x in state)
    for rec in out.records[:nsetup]:
        if not rec.ok:
            return f"{rec.step} {rec.describe_result()}"
    last = out.records[nsetup - 1]
    got = last.uids if family == "uid" else last.gids
    if any(g is not None and g != w for g, w in zip(got, want)):
        return f"read back {got} after {last.step}, wanted {want}"
    if family == "gid" and last.uids[1] == 0:
        return "could not drop the uid to make gid calls unprivileged"
    return None


def build(
    family: str = "uid",
    *,
    a: int = 2,
    b: int = 3,
    timeout: float = engine.DEFAULT_TIMEOUT,
    module: Any = None,
    via: str = "auto",
    jobs: int | None = None,
) -> Model:
    """Measure the model: one child per (state, call).

    ``jobs`` runners work at once (default: one per CPU, at most 4).
    """
    if family not in _CALLS:
        raise ValueError(f"family must be 'uid' or 'gid', not {family!r}")
    from uidprobe.process import validate_ids
    from uidprobe.store import current_fingerprint
    from uidprobe.suite import runtime_features

    validate_ids((a, b), "model id", names=("A", "B"))
    ids = {"A": a, "B": b}
    feats = runtime_features(timeout, module, a, a)
    states = all_states()
    calls = all_calls(family)
    work: list[list[Step]] = []
    nsetup: dict[State, int] = {}
    for st in states:
        setup = _setup(family, st, ids, feats)
        nsetup[st] = len(setup)
        for op, args in calls:
            work.append([*setup, Step(op, tuple(_num(x, ids) for x in args))])
    if jobs is None:
        import os

        jobs = min(4, os.cpu_count() or 1)
    outcomes = engine.run_batch(work, timeout, module, via, jobs)

    state_why: dict[State, str | None] = {}
    transitions = []
    it = iter(outcomes)
    for st in states:
        first: str | None = None
        for (op, args), out in zip(calls, it):
            why = _established(family, st, ids, out, nsetup[st])
            if why is not None:
                first = first or why
                transitions.append(Transition(st, op.call, args, None, None, None, f"state not established: {why}"))
                continue
            if len(out.records) <= nsetup[st]:
                transitions.append(Transition(st, op.call, args, None, None, None, out.describe_end()))
                continue
            rec = out.records[nsetup[st]]
            ids3 = rec.uids if family == "uid" else rec.gids
            end = (_sym(ids3[0], ids), _sym(ids3[1], ids), _sym(ids3[2], ids))
            err = None if rec.ok else errno_mod.errorcode.get(rec.errno, str(rec.errno))
            transitions.append(Transition(st, op.call, args, rec.ret, err, end))
        # A state is "established" when every child established it.
        state_why[st] = first
    return Model(family, ids, current_fingerprint(), state_why, tuple(transitions))


# ------------------------------------------------------------- loading, diff


def from_json(doc: Any) -> Model:
    """A Model from parsed JSON; ModelError when it is not one."""
    try:
        if doc.get("schema") != SCHEMA or doc.get("version") != VERSION:
            raise ModelError(f"not a {SCHEMA} version {VERSION} document")
        ids = {"A": int(doc["ids"]["A"]), "B": int(doc["ids"]["B"])}
        states = {tuple(s["state"]): s["reason"] for s in doc["states"]}
        transitions = tuple(
            Transition(
                tuple(t["from"]),
                str(t["call"]),
                tuple(t["args"]),
                t["ret"],
                t["errno"],
                None if t["to"] is None else tuple(t["to"]),
                t.get("note"),
            )
            for t in doc["transitions"]
        )
        return Model(str(doc["family"]), ids, dict(doc["fingerprint"]), states, transitions)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, ModelError):
            raise
        raise ModelError(f"malformed model: {type(e).__name__}: {e}") from None


def load(path: str) -> Model:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise ModelError(f"{path}: {e.strerror}") from None
    except ValueError as e:
        raise ModelError(f"{path}: not JSON: {e}") from None
    return from_json(doc)


def diff(a: Model, b: Model) -> list[str]:
    """One line per transition whose result differs between two models."""
    if a.family != b.family:
        return [f"families differ: {a.family} and {b.family}"]
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


# ------------------------------------------------------------- summaries


def _changes(t: Transition) -> bool:
    return t.ret == 0 and t.end is not None and t.end != t.start


def _requested_change(t: Transition) -> bool:
    """Did the call ask for any id to differ from what it was?"""
    r, e, s = t.start
    if t.call in ("setuid", "setgid"):
        targets = (r, e, s) if e == "0" and t.call == "setuid" else (e,)
        return t.args[0] != "-1" and any(t.args[0] != x for x in targets)
    positions = {"seteuid": (e,), "setegid": (e,), "setreuid": (r, e), "setregid": (r, e)}.get(t.call, (r, e, s))
    return any(arg not in ("-1", cur) for arg, cur in zip(t.args, positions))


def regain_states(model: Model) -> list[State]:
    """Established states without effective id 0 from which 0 can be reached."""
    edges: dict[State, set[State]] = {}
    for t in model.transitions:
        if _changes(t):
            assert t.end is not None
            edges.setdefault(t.start, set()).add(t.end)
    found = []
    for st, why in model.states.items():
        if why is not None or st[1] == "0":
            continue
        seen, queue = {st}, deque([st])
        while queue:
            cur = queue.popleft()
            if cur[1] == "0":
                found.append(st)
                break
            for nxt in edges.get(cur, ()):
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append(nxt)
    return found


def summary(model: Model) -> str:
    """A readable account of the model: what a security reviewer asks first."""
    ts = model.transitions
    ran = [t for t in ts if t.ret is not None]
    full_drops = [t for t in ran if _changes(t) and "0" in t.start and "0" not in (t.end or ())]
    silent = [t for t in ran if t.ret == 0 and t.end == t.start and _requested_change(t)]
    failed_but_changed = [t for t in ran if t.ret != 0 and t.end != t.start]
    not_est = [s for s, why in model.states.items() if why is not None]
    regain = regain_states(model)
    fam = model.family
    lines = [
        f"{fam} model: {len(model.states)} states, {len(ts)} transitions ({len(ran)} ran), "
        f"A={model.ids['A']} B={model.ids['B']}",
        f"states not established: {len(not_est)}" + (f" ({_states(not_est)})" if not_est else ""),
        f"states without effective {fam} 0 from which 0 can be regained: {len(regain)}"
        + (f" ({_states(regain)})" if regain else ""),
        f"calls that reach a full drop (0 in no position afterwards): {len(full_drops)}",
    ]
    by_call: dict[str, int] = {}
    for t in full_drops:
        by_call[t.describe()] = by_call.get(t.describe(), 0) + 1
    for c, n in sorted(by_call.items()):
        lines.append(f"  {c}: from {n} state(s)")
    lines.append(f"calls that fail silently (success returned, ids unchanged): {len(silent)}")
    lines += [f"  from ({','.join(t.start)}) {t.describe()}" for t in silent[:20]]
    if len(silent) > 20:
        lines.append(f"  ... and {len(silent) - 20} more")
    lines.append(f"calls that failed but changed ids: {len(failed_but_changed)}")
    lines += [f"  from ({','.join(t.start)}) {t.describe()}: {t.result()}" for t in failed_but_changed[:20]]
    return "\n".join(lines) + "\n"


def _states(states: Iterable[State]) -> str:
    return " ".join(f"({','.join(s)})" for s in states)


def to_dot(model: Model) -> str:
    """Graphviz DOT: established states, and the calls that move between them."""
    edges: dict[tuple[State, State], list[str]] = {}
    for t in model.transitions:
        if _changes(t):
            assert t.end is not None
            edges.setdefault((t.start, t.end), []).append(t.describe())
    name = f"uidprobe_{model.family}_model"
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


# ------------------------------------------------------ verdicts from the model


def derive_verdicts(model: Model) -> dict[str, verdicts.Result]:
    """The uid probes' verdicts, by replaying their calls through the model.

    Replays each uid scenario with U = A and both of its other ids = B (the
    model has two ordinary ids), feeding the model's recorded results to the
    same ``verdicts.evaluate`` the live probes use.  The gid model is made
    without privilege and cannot replay the gid probes, so only uid probes
    are derived.
    """
    if model.family != "uid":
        raise ValueError("verdicts are derived from the uid model")
    table = model.lookup()
    works = any(t.call == "setresuid" and t.errno != "ENOSYS" and t.ret is not None for t in model.transitions)
    feats = engine.Features(getresuid=True, setresuid=works, getresgid=True, setresgid=True)
    idset = IdSet(user=model.ids["A"], a=model.ids["B"], b=model.ids["B"])
    results = {}
    for sc in scenarios.SCENARIOS:
        if sc.family != "uid":
            continue
        if any(not getattr(feats, n) for n in sc.needs):
            results[sc.name] = verdicts.not_run(sc.name, sc.meaning, False, f"{sc.needs[0]}() fails with ENOSYS")
            continue
        plan = scenarios.plan(sc, idset, idset, feats)
        replayed = _replay(plan.engine_steps, model, table)
        if isinstance(replayed, str):
            results[sc.name] = verdicts.not_run(sc.name, sc.meaning, None, replayed)
        else:
            results[sc.name] = verdicts.evaluate(plan, replayed)
    return results


def _replay(steps: Sequence[Step], model: Model, table: dict[Any, Transition]) -> Outcome | str:
    """The trace the probe would have seen, from the model; or why the model
    cannot tell (a state on the path was never established)."""
    ids = model.ids
    start: State = ("A", "0", "0")  # what the scenarios' setup establishes, with U = A
    records: list[Record] = []
    why = model.states.get(start)
    first = steps[0]
    if why is not None:
        records.append(Record(first, -1, errno_mod.EPERM, (0, 0, 0), (0, 0, 0), ()))
        return Outcome(tuple(records), True, False, 0, None, True)
    records.append(Record(first, 0, 0, tuple(_num(x, ids) for x in start), (0, 0, 0), ()))  # type: ignore[arg-type]
    state = start
    for step in steps[1:]:
        args = tuple("-1" if a == -1 else _sym(a, ids) for a in step.args)
        t = table.get((state, step.op.call, args))
        if t is None or t.ret is None or t.end is None:
            why = t.note if t is not None else "not in the model"
            return f"the model cannot replay {step} from ({','.join(state)}): {why}"
        err = 0 if t.errno is None else getattr(errno_mod, t.errno, 0)
        uids = tuple(None if x == "?" else _num(x, ids) if x in SYMBOLS else int(x) for x in t.end)
        records.append(Record(step, t.ret, err, uids, (0, 0, 0), ()))  # type: ignore[arg-type]
        state = t.end
    return Outcome(tuple(records), True, False, 0, None, True)
