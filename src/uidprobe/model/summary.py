"""Summaries of a model: what a security reviewer asks first."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from uidprobe.model.data import Model, State, Transition

__all__ = ["changes", "regain_states", "summary"]


def changes(t: Transition) -> bool:
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
        if changes(t):
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
    full_drops = [t for t in ran if changes(t) and "0" in t.start and "0" not in (t.end or ())]
    silent = [t for t in ran if t.ret == 0 and t.end == t.start and _requested_change(t)]
    failed_but_changed = [t for t in ran if t.ret != 0 and t.end != t.start]
    not_est = [s for s, why in model.states.items() if why is not None]
    regain = regain_states(model)
    fam = model.family.value
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
