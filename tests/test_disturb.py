"""Nothing another user does can choose root's verdicts (#18, item 4).

Any process of a probe child's real or saved uid may signal it (kill(2)
allows it).  Here such processes really loop ``kill(-1, SIG)`` while uidprobe
probes: a disturbed child is told from the engine's own timeout kill, run
once more, and never stored as a fact.

Each attack runs in a private pid namespace (``unshare --pid``) together
with what it attacks, so that ``kill(-1)`` reaches nothing else on this
shared machine; the attackers are started before the work and killed after
it, and end by themselves within a minute whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import requires_root, requires_tools
from uidprobe import cli, store
from uidprobe.names import OBSERVED

pytestmark = [requires_root, requires_tools]

LOOP_C = r"""
#define _GNU_SOURCE 1 // setresuid
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

// kill(-1, SIG) as often as it can, for at most SECONDS:
//   loop SIG SECONDS       as whoever runs it (setpriv chooses the uid)
//   loop SIG SECONDS UID   as root that holds UID only around each kill(2),
//                          so that a look at /proc almost never sees it
int main(int argc, char **argv)
{
    int sig = atoi(argv[1]);
    uid_t uid = argc > 3 ? (uid_t)atol(argv[3]) : 0;
    alarm((unsigned)atoi(argv[2]));
    for (;;) {
        if (argc > 3 && setresuid(uid, uid, 0) != 0)
            return 1;
        kill(-1, sig);
        if (argc > 3 && setresuid(0, 0, 0) != 0)
            return 1;
    }
}
"""

# Runs as pid 1 of the private pid namespace: starts the attackers, waits
# until each one loops (holds its uid), runs the work, ends the attackers.
DRIVER = """
import json, subprocess, sys, time
LOOP, ATTACKERS, WORK, ENV = {loop!r}, {attackers!r}, {work!r}, {env!r}
procs = []
for uid, sig, switching in ATTACKERS:
    if switching:  # root, taking the uid only around each kill
        procs.append(subprocess.Popen([LOOP, str(sig), "60", str(uid)]))
    else:
        cmd = ["setpriv", f"--reuid={{uid}}", f"--regid={{uid}}", "--clear-groups", LOOP, str(sig), "60"]
        procs.append(subprocess.Popen(cmd))
for p in procs:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{{p.pid}}/comm") as f:
            if f.read().strip() == "loop":
                break
        time.sleep(0.01)
time.sleep(0.05)
try:
    work = subprocess.run(WORK, env=ENV, capture_output=True, text=True, timeout=120)
finally:
    alive = [p.poll() is None for p in procs]
    for p in procs:
        p.kill()
        p.wait()
print(json.dumps({{"rc": work.returncode, "stdout": work.stdout, "stderr": work.stderr, "alive": alive}}))
"""


@pytest.fixture(scope="module")
def loop() -> Iterator[str]:
    """The attacker, built where any uid can run it."""
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler")
    d = Path(tempfile.mkdtemp(prefix="uidprobe-disturb-", dir="/tmp"))
    try:
        d.chmod(0o755)
        (d / "loop.c").write_text(LOOP_C)
        subprocess.run(["cc", "-O2", "-o", str(d / "loop"), str(d / "loop.c")], check=True)
        (d / "loop").chmod(0o755)
        yield str(d / "loop")
    finally:
        shutil.rmtree(d)


def attacked(
    loop: str, attackers: list[tuple[int, int, bool]], work: list[str], env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``work`` while ``attackers`` ((uid, signal, switching) each) loop
    kill(-1, signal), all in a private pid namespace; what the work printed."""
    code = DRIVER.format(loop=loop, attackers=attackers, work=work, env={**os.environ, **(env or {})})
    proc = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    assert all(result["alive"]), "an attacker was not running for the whole work"
    return result


def uidprobe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "uidprobe", *args]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    d = tmp_path / "store"
    d.mkdir(mode=0o755)
    return d / "verdicts"


def stored_lines(path: Path) -> list[str]:
    """The store without its time stamp: what two runs must agree on."""
    return [line for line in path.read_text().splitlines() if not line.startswith("created ")]


# --------------------------------------------------------------- the engine

# Under the fault profile "hang-as-user" a probe child hangs in its first
# set*id call made as an ordinary real uid: there any process of that uid
# may signal it, for as long as the deadline allows.
HANG_AS_USER = "hang-as-user"
HANGS_AS_UID_1 = """
import json
from uidprobe.engine import Engine, Op, Step
out = Engine().run([Step(Op.SETRESUID, (1, 0, 0)), Step(Op.SETEUID, (2,))], timeout=5)
print(json.dumps({"records": len(out.records), "timed_out": out.timed_out, "signal": out.signal,
                  "stopped": out.stopped, "disturbed": out.disturbed, "end": out.describe_end()}))
"""


def faults(so: Path) -> dict[str, str]:
    return {"LD_PRELOAD": str(so), "UIDPROBE_FAULT": HANG_AS_USER}


@pytest.mark.parametrize("sig", [None, signal.SIGKILL, signal.SIGSTOP])
def test_the_engine_tells_an_outside_signal_from_its_own_timeout(loop: str, faults_so: Path, sig: int | None) -> None:
    attackers = [] if sig is None else [(1, int(sig), False)]
    result = attacked(loop, attackers, [sys.executable, "-c", HANGS_AS_UID_1], faults(faults_so))
    out = json.loads(result["stdout"])
    done = f"after {out['records']} step(s)"  # 0 when the signal came before the first record was stored
    if sig is None:
        assert out["timed_out"] and out["disturbed"] is None and out["records"] == 1
        assert out["end"] == "probe child timed out after 1 step(s) and was killed"
    elif sig == signal.SIGKILL:
        assert not out["timed_out"] and out["signal"] == signal.SIGKILL
        assert (
            out["end"]
            == f"probe child was disturbed from outside: killed by SIGKILL, which uidprobe did not send, {done}"
        )
    else:
        # Killed by the engine as soon as it was seen stopped, not left to its deadline.
        assert out["stopped"] == signal.SIGSTOP and out["signal"] == signal.SIGKILL and not out["timed_out"]
        assert out["end"] == f"probe child was disturbed from outside: stopped by SIGSTOP, {done}"


# ------------------------------------------------------------ configure


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
@pytest.mark.parametrize(
    ("attacker", "ids"),
    [
        pytest.param((1, False), ["--uids", "1,2,3"], id="uid-1-with-uids-1,2,3"),
        # The default U, taken by root only around each kill: /proc almost
        # never shows it, so the ids are chosen as if nobody held it.
        pytest.param((65520, True), [], id="switching-to-default-U"),
    ],
)
def test_configure_under_attack_stores_all_yes_or_writes_nothing(
    loop: str, store_path: Path, sig: int, attacker: tuple[int, bool], ids: list[str]
) -> None:
    first = subprocess.run(
        uidprobe_cmd("configure", *ids), env={**os.environ, store.ENV_VAR: str(store_path)}, check=False
    )
    assert first.returncode == cli.EX_OK
    before = store_path.read_bytes()

    uid, switching = attacker
    result = attacked(
        loop, [(uid, int(sig), switching)], uidprobe_cmd("configure", *ids), {store.ENV_VAR: str(store_path)}
    )

    loaded = store.load(str(store_path))
    assert loaded.results is not None, loaded.reason
    assert not any("killed by" in r.reason or "disturbed" in r.reason for r in loaded.results.values())
    if result["rc"] == cli.EX_OK:
        assert all(r.verdict is True for r in loaded.results.values()), loaded.results
    else:
        assert result["rc"] == cli.EX_TEMPFAIL, result
        assert store_path.read_bytes() == before
        line = result["stderr"]
        assert line.count("\n") == 1 and line.startswith(f"uidprobe: configure: nothing written, {store_path} left")
        assert "disturbed from outside" in line and "and again when run once more" in line


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_processes_of_uids_1_2_3_do_not_disturb_a_default_configure(loop: str, tmp_path: Path, sig: int) -> None:
    paths = []
    for name, attackers in (("quiet", []), ("attacked", [(u, int(sig), False) for u in (1, 2, 3)])):
        d = tmp_path / name
        d.mkdir(mode=0o755)
        paths.append(d / "verdicts")
        result = attacked(loop, attackers, uidprobe_cmd("configure"), {store.ENV_VAR: str(paths[-1])})
        assert result["rc"] == cli.EX_OK, result
    quiet, attacked_store = (stored_lines(p) for p in paths)
    assert attacked_store == quiet
    assert sum(line.startswith("result ") for line in quiet) == len(OBSERVED)


# ------------------------------------------------------ the other doors


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_configure_writes_nothing_when_a_probe_is_disturbed_twice(
    loop: str, store_path: Path, faults_so: Path, sig: int
) -> None:
    env = {store.ENV_VAR: str(store_path)}
    assert subprocess.run(uidprobe_cmd("configure"), env={**os.environ, **env}, check=False).returncode == cli.EX_OK
    before = store_path.read_bytes()

    result = attacked(
        loop, [(1, int(sig), False)], uidprobe_cmd("configure", "--uids", "1,2,3"), {**env, **faults(faults_so)}
    )

    assert result["rc"] == cli.EX_TEMPFAIL, result
    assert store_path.read_bytes() == before
    line = result["stderr"]
    assert line.count("\n") == 1 and line.startswith(f"uidprobe: configure: nothing written, {store_path} left")
    assert ": USESETEUID, " in line and "; and again when run once more" in line


@pytest.mark.parametrize(
    ("sig", "how"),
    [(signal.SIGKILL, "killed by SIGKILL, which uidprobe did not send"), (signal.SIGSTOP, "stopped by SIGSTOP")],
)
def test_a_probe_disturbed_twice_is_undetermined_and_says_so(loop: str, faults_so: Path, sig: int, how: str) -> None:
    cmd = uidprobe_cmd("check", "USESETEUID", "--uids", "1,2,3")
    result = attacked(loop, [(1, int(sig), False)], cmd, faults(faults_so))
    assert result["rc"] == cli.EX_UNDETERMINED, result
    # after 0 steps when the signal came before the first record was stored
    assert re.fullmatch(
        f"USESETEUID: undetermined: probe child was disturbed from outside: {how}, after [01] step\\(s\\); "
        "and again when run once more\n",
        result["stdout"],
    ), result["stdout"]


IMPORT = """
import json
import uidprobe.config as c
snap = c._snapshot  # the reasons behind the values this import gave
print(json.dumps({"source": c.SOURCE, "values": snap.values, "reasons": snap.reasons}))
"""


def test_the_import_time_probe_under_attack_gives_1_or_the_safe_0_with_the_reason(loop: str, tmp_path: Path) -> None:
    env = {store.ENV_VAR: str(tmp_path / "absent")}
    result = attacked(loop, [(65520, int(signal.SIGKILL), True)], [sys.executable, "-c", IMPORT], env)
    assert result["rc"] == 0, result["stderr"]
    out = json.loads(result["stdout"])
    assert out["source"] == "probe"
    for name, value in out["values"].items():
        assert value == 1 or "disturbed from outside" in out["reasons"][name], (name, out["reasons"][name])
