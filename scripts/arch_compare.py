#!/usr/bin/env python3
"""Measure what uidprobe sees on one architecture, and compare two.

    arch_compare.py measure OUT.json [--runner PATH | --fork] [--label NAME] [--no-switch]
    arch_compare.py compare A.json B.json

``measure`` runs, with whatever ``uidprobe`` this Python imports: every
probe (verdict and reason), then the uid and the gid transition models
(2,376 transitions each) over ids above 65535 (70000, 70001), so that
16-bit id calls would show, and what a verified switch costs; and writes
them as JSON with the engine's wire format and how long each part took.  ``--runner`` forks the children from
that runner program (e.g. a cross-built one under qemu-user), never from
this process; ``--fork`` from this process, never from a runner.
``--no-switch`` leaves the switch cost out (where this Python is not the
architecture measured: only the runner is).

``compare`` prints every verdict, reason or transition that differs between
two such files, and exits 1 if any does (0 otherwise); and the second
one's switch cost (``as_user`` and restore, against a bare setresuid pair).  ``.ci/arch`` measures
on x86_64 and on each other architecture, and compares.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

MODEL_IDS = (70000, 70001)


def measure(out: str, runner: str | None, fork: bool, label: str | None, switch: bool) -> None:
    from uidprobe import model, suite
    from uidprobe.engine import Engine

    engine = Engine(runner=runner, fallback=False) if runner else Engine(runner=None) if fork else Engine()
    via = f"runner {runner}" if runner else "fork" if fork else "the installed runner"
    started = time.monotonic()
    results = suite.run(engine=engine)
    took = {"probes": time.monotonic() - started}
    doc: dict[str, Any] = {
        "machine": label or platform.machine(),
        "byteorder": sys.byteorder,
        "wire": engine.wire_abi,
        "via": via,
        "verdicts": {name: [r.verdict, r.reason] for name, r in sorted(results.items())},
        "models": {},
    }
    for family in ("uid", "gid"):
        started = time.monotonic()
        m = model.build(family, a=MODEL_IDS[0], b=MODEL_IDS[1], engine=engine)
        took[f"{family} model"] = time.monotonic() - started
        doc["models"][family] = m.to_json()
    doc["seconds"] = {k: round(v, 2) for k, v in took.items()}
    doc["switch_us"] = switch_cost({name: r.value for name, r in results.items()}) if switch else {}
    with open(out, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    print(f"{doc['machine']} ({doc['wire']}, via {via}): " + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()))
    if switch:
        print(f"{doc['machine']} switch cost: {costs(doc)}")


def switch_cost(values: dict[str, Any], n: int = 400) -> dict[str, float | str]:
    """Microseconds per verified ``as_user(1000, 1000)`` and restore in
    each scope, and per bare ``os.setresuid`` pair (the median of five runs
    of ``n``); or why a scope refuses here.  Under qemu-user these are the
    emulator's figures, not the architecture's, and a process-scope switch
    refuses: qemu's own thread keeps its capabilities."""
    import os
    import statistics

    from uidprobe.errors import PrivilegeError
    from uidprobe.privileges import Switcher

    def per_call(step: Any) -> float:
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(n):
                step()
            runs.append((time.perf_counter() - started) / n * 1e6)
        return round(statistics.median(runs), 1)

    def bare() -> None:
        os.setresuid(-1, 1000, -1)
        os.setresuid(-1, 0, -1)

    out: dict[str, float | str] = {"bare setresuid pair": per_call(bare)}
    for scope in ("process", "thread"):
        name = f"as_user + restore, {scope} scope"
        try:
            sw = Switcher(values, scope=scope)  # type: ignore[arg-type]

            def switch(sw: Switcher = sw) -> None:
                with sw.as_user(1000, 1000):
                    pass

            switch()  # plans cached, engine loaded
            out[name] = per_call(switch)
        except PrivilegeError as e:
            out[name] = f"refused: {str(e)[:120]}"
    return out


def costs(doc: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {v} us" if isinstance(v, float) else f"{k}: {v}" for k, v in doc["switch_us"].items())


def compare(a_path: str, b_path: str) -> int:
    from uidprobe import model

    with open(a_path) as f:
        a = json.load(f)
    with open(b_path) as f:
        b = json.load(f)
    lines = []
    for name in sorted(set(a["verdicts"]) | set(b["verdicts"])):
        va, vb = a["verdicts"].get(name), b["verdicts"].get(name)
        if va != vb:
            lines.append(f"{name}: {a['machine']} {va} but {b['machine']} {vb}")
    for family in ("uid", "gid"):
        ma, mb = (model.from_json(doc["models"][family]) for doc in (a, b))
        lines += [f"{family} model: {line}" for line in model.diff(ma, mb)]
        ran = sum(t.ret is not None for t in ma.transitions)
        if ran != len(ma.transitions):
            lines.append(f"{family} model: only {ran} of {len(ma.transitions)} transitions ran on {a['machine']}")
    for line in lines:
        print(line)
    observed = sum(v[0] is True for v in b["verdicts"].values())
    sizes = ", ".join(f"{f} model {len(b['models'][f]['transitions'])} transitions" for f in ("uid", "gid"))
    print(
        f"{b['machine']} ({b['wire']}) against {a['machine']}: {len(lines)} difference(s); "
        f"{observed} of {len(b['verdicts'])} verdicts yes; {sizes}"
    )
    if b["switch_us"]:
        print(f"{b['machine']} switch cost: {costs(b)}")
    return 1 if lines else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("out")
    how = m.add_mutually_exclusive_group()
    how.add_argument("--runner")
    how.add_argument("--fork", action="store_true")
    m.add_argument("--label", help="the architecture's name (default: this Python's machine)")
    m.add_argument("--no-switch", action="store_true", help="do not measure the switch cost")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = parser.parse_args()
    if args.command == "measure":
        measure(args.out, args.runner, args.fork, args.label, not args.no_switch)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
