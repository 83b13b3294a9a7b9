#!/usr/bin/env python3
"""uidprobe benchmarks: every figure is a ratio measured side by side, in one run.

    python benchmarks/bench.py            # as root (the probes need it)
    python benchmarks/bench.py --quick    # fewer repetitions, smaller callers

1. The full probe suite as a lone batch (the last batch at least 0.6 s
   before: what the command line, ``configure`` and a live probe at import
   make) against its floor: a C loop of the same number of bare
   fork/_exit/waitpid, one after the other (the suite spawns a runner of its
   own, which forks one child per probe, all at once).  Target: within
   1.75x that sequential floor.
2. ``import uidprobe.config`` and reading a value with a valid store, against a
   bare interpreter start.  Target: at most 3 ms added, no C extension loaded.
3. The probe suite from a caller holding 50 MB, 1 GB and 4 GB of touched memory,
   against one fork of that same caller.  Target: within 2x a single fork at 1 GB.
4. The full uid transition model against its floor (2,376 bare forks).
   Target: within 2x.
5. A verified switch: ``as_user`` + restore (process scope, full verification,
   no other thread) against a bare ``os.setresuid(-1, 1000, -1)`` +
   ``os.setresuid(-1, 0, -1)`` pair.  Target: within 8x.
6. The same switch in each scope with 0, 8, 64 and 256 idle threads, against
   that scope with none: the C library broadcasts a process-wide change to
   every thread, the per-thread raw calls do not.  Target: thread scope at
   256 threads within 1.5x of thread scope at 0.
7. The same switch setting 1, 64 and 1,024 supplementary groups, against
   itself with 1 group, and against the bare calls it makes (setgroups,
   setresgid, setresuid, and back).  And ``as_user("nobody")``, which looks
   the account up (password and group databases) on every call, against
   ``as_user(65534, 65534, [65534])``.  No target: the cost by group count.

Timings are medians over interleaved repetitions; the machine is shared and
noisy, which is why the targets are checked here and never in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_floor(tmp: Path) -> Path:
    exe = tmp / "floor"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(HERE / "floor.c")], check=True)
    return exe


def floor_seconds(exe: Path, n: int) -> float:
    return float(subprocess.run([str(exe), str(n)], capture_output=True, text=True, check=True).stdout)


def median_interleaved(a, b, reps: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    xs, ys = [], []
    for _ in range(reps):
        xs.append(a())
        ys.append(b())
    return statistics.median(xs), statistics.median(ys)


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def row(name: str, value: float, reference: float, unit_scale: float, unit: str, target: str) -> None:
    ratio = value / reference if reference else float("inf")
    print(
        f"{name:<44} {value * unit_scale:10.2f} {unit:<3} {reference * unit_scale:10.2f} {unit:<3} "
        f"{ratio:7.2f}x   {target}"
    )


def bench_suite(floor: Path, reps: int) -> None:
    from uidprobe import suite
    from uidprobe.names import OBSERVED

    suite.run()  # warm: loads the engine, measures (and keeps) the run-time features
    children = len(OBSERVED)  # one per observed probe (POSIX_SAVED_IDS is sysconf), + the runner process

    def lone() -> float:
        time.sleep(0.6)  # nothing from the last batch is warm any more
        return timed(suite.run)

    def floor_() -> float:
        time.sleep(0.6)
        return floor_seconds(floor, children)

    s, f = median_interleaved(lone, floor_, reps)
    row(f"1. lone probe suite ({children} children) vs sequential forks", s, f, 1e3, "ms", "<= 1.75x")


def bench_import(reps: int, tmp: Path) -> None:
    from uidprobe import store, suite

    d = tmp / "store"
    d.mkdir(mode=0o755)
    path = d / "verdicts"
    store.save(str(path), suite.run())
    env = {**os.environ, store.ENV_VAR: str(path)}
    check = (
        "import sys, uidprobe.config as c; assert c.SOURCE == 'store', c.REASON; "
        "assert 'uidprobe._engine' not in sys.modules; c.USESETEUID"
    )
    subprocess.run([sys.executable, "-c", check], env=env, check=True)  # the claim, checked once

    def start(code: str) -> float:
        return timed(lambda: subprocess.run([sys.executable, "-c", code], env=env, check=True))

    imp, bare = median_interleaved(
        lambda: start("import uidprobe.config as c; c.USESETEUID"), lambda: start("pass"), reps
    )
    row("2. import uidprobe.config (valid store)", imp, bare, 1e3, "ms", f"adds {(imp - bare) * 1e3:.2f} ms (<= 3)")


CALLER = r"""
import json, os, statistics, sys, time
size = int(sys.argv[1]); reps = int(sys.argv[2])
ballast = bytearray(size)
for i in range(0, size, 4096):
    ballast[i] = 1                      # touch every page: resident, not just reserved
from uidprobe import suite
suite.run()
def fork_once():
    t = time.perf_counter(); pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0); return time.perf_counter() - t
def suite_once():
    t = time.perf_counter(); suite.run(); return time.perf_counter() - t
f, s = [], []
for _ in range(reps):
    f.append(fork_once()); s.append(suite_once())
print(json.dumps([statistics.median(s), statistics.median(f)]))
"""


def bench_big_callers(sizes: list[tuple[str, int]], reps: int) -> None:
    for label, size in sizes:
        out = subprocess.run(
            [sys.executable, "-c", CALLER, str(size), str(reps)], capture_output=True, text=True, check=True
        ).stdout
        s, f = json.loads(out)
        target = "<= 2x one fork" if label == "1 GB" else ""
        row(f"3. suite from a {label} caller vs one fork of it", s, f, 1e3, "ms", target)


def bench_model(floor: Path, reps: int) -> None:
    from uidprobe import model

    model.build("uid")  # warm
    n = 27 * 88
    cpus = min(4, os.cpu_count() or 1)
    for jobs in sorted({1, cpus}):
        m, f = median_interleaved(
            lambda j=jobs: timed(lambda: model.build("uid", jobs=j)), lambda: floor_seconds(floor, n), reps
        )
        how = "one runner" if jobs == 1 else f"{jobs} runners (the default)"
        row(f"4. full uid model ({n} children), {how}", m, f, 1e3, "ms", "<= 2x" if jobs == cpus else "")


def _values() -> dict[str, int | str | None]:
    from uidprobe import suite

    return {name: r.value for name, r in suite.run().items()}


def _switch_seconds(sw, n: int, *target) -> float:  # type: ignore[no-untyped-def]
    target = target or (1000, 1000)
    t = time.perf_counter()
    for _ in range(n):
        with sw.as_user(*target):
            pass
    return (time.perf_counter() - t) / n


def _bare_pair_seconds(n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        os.setresuid(-1, 1000, -1)
        os.setresuid(-1, 0, -1)
    return (time.perf_counter() - t) / n


def bench_switch(reps: int) -> None:
    from uidprobe.privileges import Switcher

    sw = Switcher(_values())
    n = 2000
    _switch_seconds(sw, n)  # warm: plans cached, engine loaded
    s, b = median_interleaved(lambda: _switch_seconds(sw, n), lambda: _bare_pair_seconds(n), reps)
    row("5. as_user + restore vs bare setresuid pair", s, b, 1e6, "us", "<= 8x")


def bench_threads(reps: int) -> None:
    import threading

    from uidprobe.privileges import Switcher

    values = _values()
    scopes = {"process": Switcher(values), "thread": Switcher(values, scope="thread")}
    n = 500
    base: dict[str, float] = {}
    for count in (0, 8, 64, 256):
        stop = threading.Event()
        idle = [threading.Thread(target=stop.wait, daemon=True) for _ in range(count)]
        for t in idle:
            t.start()
        try:
            for sw in scopes.values():
                _switch_seconds(sw, n)  # warm
            p, t = median_interleaved(
                lambda: _switch_seconds(scopes["process"], n), lambda: _switch_seconds(scopes["thread"], n), reps
            )
        finally:
            stop.set()
            for th in idle:
                th.join()
        if count == 0:
            base = {"process": p, "thread": t}
        row(f"6. process scope, {count:3} idle threads vs 0", p, base["process"], 1e6, "us", "")
        target = "<= 1.5x" if count == 256 else ""
        row(f"6. thread scope,  {count:3} idle threads vs 0", t, base["thread"], 1e6, "us", target)


def _bare_groups_seconds(n: int, groups: list[int]) -> float:
    start = os.getgroups()
    t = time.perf_counter()
    for _ in range(n):
        os.setgroups(groups)
        os.setresgid(-1, 1000, -1)
        os.setresuid(-1, 1000, -1)
        os.setresuid(-1, 0, -1)
        os.setresgid(-1, 0, -1)
        os.setgroups(start)
    return (time.perf_counter() - t) / n


def bench_groups(reps: int) -> None:
    from uidprobe.privileges import Switcher

    sw = Switcher(_values())
    n = 500
    one: float | None = None
    for count in (1, 64, 1024):
        groups = list(range(20000, 20000 + count))
        _switch_seconds(sw, n, 1000, 1000, groups)  # warm
        s, b = median_interleaved(
            lambda g=groups: _switch_seconds(sw, n, 1000, 1000, g), lambda g=groups: _bare_groups_seconds(n, g), reps
        )
        one = one or s
        what = f"{count:4} group{'s' if count > 1 else ' '}"
        row(f"7. as_user, {what} vs 1 group", s, one, 1e6, "us", "")
        row(f"7. as_user, {what} vs bare calls", s, b, 1e6, "us", "")
    _switch_seconds(sw, n, "nobody")  # warm
    named, numbers = median_interleaved(
        lambda: _switch_seconds(sw, n, "nobody"), lambda: _switch_seconds(sw, n, 65534, 65534, [65534]), reps
    )
    row('7. as_user("nobody") vs its numbers', named, numbers, 1e6, "us", "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and no 4 GB caller")
    parser.add_argument(
        "--only",
        choices=["suite", "import", "callers", "model", "switch", "threads", "groups"],
        help="run one benchmark",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench.py: run as root: the probes need it", file=sys.stderr)
        return 77
    if shutil.which("cc") is None:
        print("bench.py: needs a C compiler for the fork floor", file=sys.stderr)
        return 1
    reps = 5 if args.quick else 21
    sizes = [("50 MB", 50 << 20), ("1 GB", 1 << 30)] + ([] if args.quick else [("4 GB", 4 << 30)])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        floor = build_floor(tmp)
        print(f"{'measurement':<58} {'uidprobe':>14} {'reference':>14} {'ratio':>8}   target")
        benches = {
            "suite": lambda: bench_suite(floor, reps * 3),
            "import": lambda: bench_import(reps, tmp),
            "callers": lambda: bench_big_callers(sizes, max(3, reps // 3)),
            "model": lambda: bench_model(floor, max(3, reps // 4)),
            "switch": lambda: bench_switch(reps),
            "threads": lambda: bench_threads(max(3, reps // 3)),
            "groups": lambda: bench_groups(reps),
        }
        for name, bench in benches.items():
            if args.only in (None, name):
                bench()
    return 0


if __name__ == "__main__":
    sys.exit(main())
