"""Adversarial cases: a switch that must not be interrupted, left holding
capabilities or lied to, and probes that must survive fork failure and fake
roots.  Every case runs real processes; anything that changes ids does so in
a subprocess, so the test process itself is never switched."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import AS_NOBODY, requires_root, run_cli, run_python

pytestmark = requires_root

ALL = {"HASSETRESUID": 1, "HASSETRESGID": 1, "HASSETREUID": 1, "HASSETREGID": 1, "USESETEUID": 1, "USESETEGID": 1}

# capset(2) from Python, independent of uidprobe: what an attacker holding
# permitted capabilities would do before calling setuid(0).
CAPSET_THEN_SETUID = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
def capset_then_setuid():
    h, d = Header(0x20080522, 0), (Data * 2)()
    libc.capget(ctypes.byref(h), d)
    d[0].effective, d[1].effective = d[0].permitted, d[1].permitted
    libc.capset(ctypes.byref(h), d)
    try:
        os.setresuid(0, 0, 0)
    except OSError as e:
        return e.strerror
    return "regained root: " + str(os.getresuid())
def cap_prm():
    with open("/proc/self/status") as f:
        return next(l.split()[1] for l in f if l.startswith("CapPrm:"))
PR_SET_KEEPCAPS = 8
"""


def run_json(code: str, **kwargs: Any) -> dict[str, Any]:
    proc = run_python(code, **kwargs)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


# ------------------------------------------------------------ capabilities


def test_the_keepcaps_attack_regains_root_after_a_drop_that_only_sets_ids() -> None:
    # The control: with keepcaps on, setting every uid to 65534 leaves the
    # permitted set full, and capset-then-setuid gets root back.
    out = run_json(
        CAPSET_THEN_SETUID + "libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)\n"
        "os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)\n"
        "print(json.dumps({'prm': cap_prm(), 'attack': capset_then_setuid()}))\n"
    )
    assert out["prm"] != "0000000000000000"
    assert out["attack"].startswith("regained root")


def test_a_permanent_drop_with_keepcaps_on_raises_and_leaves_no_capability() -> None:
    out = run_json(
        CAPSET_THEN_SETUID + "libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)\n"
        "from uidprobe.privileges import Switcher, VerificationError\n"
        "try:\n"
        f"    Switcher({ALL!r}).drop_permanently(65534, 65534)\n"
        "    error = None\n"
        "except VerificationError as e:\n"
        "    error = str(e)\n"
        "print(json.dumps({'error': error, 'prm': cap_prm(), 'uids': os.getresuid(),\n"
        "    'keepcaps': libc.prctl(7, 0, 0, 0, 0), 'attack': capset_then_setuid()}))\n"
    )
    assert out["error"] is not None and "PR_SET_KEEPCAPS" in out["error"] and "cleared" in out["error"]
    assert out["uids"] == [65534, 65534, 65534]
    assert out["prm"] == "0000000000000000" and out["keepcaps"] == 0
    assert out["attack"] == "Operation not permitted"


def test_a_clean_permanent_drop_returns_and_leaves_no_capability() -> None:
    out = run_json(
        CAPSET_THEN_SETUID + "from uidprobe.privileges import Switcher, current_caps\n"
        f"Switcher({ALL!r}).drop_permanently(65534, 65534)\n"
        "print(json.dumps({'prm': cap_prm(), 'empty': not current_caps().permitted,\n"
        "    'attack': capset_then_setuid()}))\n"
    )
    assert out == {"prm": "0000000000000000", "empty": True, "attack": "Operation not permitted"}


def test_ambient_capabilities_do_not_survive_a_permanent_drop() -> None:
    # An ambient capability needs it in the inheritable set first (capset),
    # then PR_CAP_AMBIENT_RAISE (47, 2).  CAP_NET_BIND_SERVICE is bit 10.
    out = run_json(
        CAPSET_THEN_SETUID + "h, d = Header(0x20080522, 0), (Data * 2)()\n"
        "libc.capget(ctypes.byref(h), d); d[0].inheritable |= 1 << 10; libc.capset(ctypes.byref(h), d)\n"
        "assert libc.prctl(47, 2, 10, 0, 0) == 0, 'could not raise an ambient capability'\n"
        "from uidprobe.privileges import Switcher, current_caps\n"
        "before = current_caps().ambient\n"
        f"Switcher({ALL!r}).drop_permanently(65534, 65534)\n"
        "c = current_caps()\n"
        "print(json.dumps({'before': before, 'ambient': c.ambient, 'prm': c.permitted, 'inh': c.inheritable}))\n"
    )
    assert out == {"before": 1 << 10, "ambient": 0, "prm": 0, "inh": 0}


def test_a_securebit_that_stops_the_kernel_clearing_capabilities_makes_the_drop_raise_and_clear_them() -> None:
    # SECBIT_NO_SETUID_FIXUP (1 << 2): the kernel keeps every capability set
    # across the uid change.  PR_SET_SECUREBITS is 28.
    out = run_json(
        CAPSET_THEN_SETUID + "assert libc.prctl(28, 1 << 2, 0, 0, 0) == 0, 'could not set the securebit'\n"
        "from uidprobe.privileges import Switcher, VerificationError\n"
        "try:\n"
        f"    Switcher({ALL!r}).drop_permanently(65534, 65534)\n"
        "    error = None\n"
        "except VerificationError as e:\n"
        "    error = str(e)\n"
        "print(json.dumps({'error': error, 'prm': cap_prm(), 'attack': capset_then_setuid()}))\n"
    )
    assert out["error"] is not None and "securebits=0x4" in out["error"]
    assert out["prm"] == "0000000000000000" and out["attack"] == "Operation not permitted"


# ------------------------------------------------------ async exceptions

STORM = """
import json, os, signal
from uidprobe.privileges import Switcher, VerificationError

class Alarm(Exception):
    pass

# A second tick landing while the first Alarm is being made surfaces as
# SystemError ("returned a result with an exception set") at the same spot:
# the same injected exception, so it counts as a hit wherever Alarm does.
HIT = (Alarm, SystemError)

def boom(signum, frame):
    # Raise only inside the library (and contextlib, which drives as_user):
    # an exception landing in this harness's own lines would test the
    # harness, not the switch.
    if frame is not None and frame.f_code.co_filename != "<string>":
        raise Alarm()

def identity():
    return (os.getresuid(), os.getresgid(), sorted(os.getgroups()))

sw = Switcher({values!r})
before = identity()
with sw.as_user(1000, 1000, [1000]):  # warm up: every import done before the storm
    pass
hits = unknown = known = 0
errors = []
signal.signal(signal.SIGALRM, boom)
# Blocked except inside the try: the loop's own bytecode (its back edge)
# must not be where the alarm lands.
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.00007)
for i in range({n}):
    try:
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGALRM])
            with sw.as_user(1000, 1000, [1000]) as inside:
                assert inside.uids[1] == 1000
        except HIT:
            hits += 1
        except VerificationError as e:
            errors.append(str(e))
    except HIT:
        hits += 1
    # Look with the alarm blocked (a pending one may still fire once: retry).
    while True:
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
            break
        except HIT:
            hits += 1
    while True:
        try:
            now = identity()
            break
        except HIT:
            hits += 1
    if now != before and not sw.switched:
        unknown += 1  # an identity the Switcher does not know: the failure that matters
    elif sw.switched:
        known += 1  # recorded: restore() must bring it back
        sw.restore()
# Still blocked: stop the storm before anything else can be interrupted.
signal.setitimer(signal.ITIMER_REAL, 0)
signal.signal(signal.SIGALRM, signal.SIG_IGN)
print(json.dumps({{"hits": hits, "unknown": unknown, "known": known, "errors": errors[:3],
                  "same": identity() == before}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "values",
    [ALL, {"HASSETREUID": 1, "HASSETREGID": 1}, {"USESETEUID": 1, "USESETEGID": 1}],
    ids=["res", "re", "e"],
)
def test_a_storm_of_raising_signal_handlers_never_leaves_an_identity_the_switcher_does_not_know(
    values: dict[str, int],
) -> None:
    # A handler that raises on every tick, thousands of times, inside
    # as_user.  The one instant CPython cannot guard (entering __exit__) can
    # be hit, and then every try of the safety net too: that switch stays
    # recorded (switched is True) and restore() brings it back.  What must
    # never happen is an identity the Switcher does not know, or a
    # verification error from an interrupted switch.
    out = run_json(STORM.format(values=values, n=3000))
    assert out["hits"] > 100, "the storm hardly hit: the test proves nothing"
    assert out["errors"] == [], "an interrupted switch was reported as a verification failure"
    assert out["unknown"] == 0 and out["same"]


def test_become_interrupted_after_switching_still_knows_the_way_back() -> None:
    # An exception between the switch and become() returning (here: raised
    # by a wrapper right after the C call) must not leave an identity that
    # restore() does not know.
    out = run_json(
        "import json, os\n"
        "from uidprobe.privileges import Switcher\n"
        f"sw = Switcher({ALL!r})\n"
        "real_enter = sw._enter\n"
        "def enter_then_interrupt(plan):\n"
        "    real_enter(plan)\n"
        "    raise KeyboardInterrupt\n"
        "sw._enter = enter_then_interrupt\n"
        "try:\n"
        "    with sw.as_user(1000, 1000):\n"
        "        pass\n"
        "except KeyboardInterrupt:\n"
        "    pass\n"
        "print(json.dumps({'uids': os.getresuid(), 'switched': sw.switched}))\n"
    )
    assert out == {"uids": [0, 0, 0], "switched": False}


def test_a_restore_that_fails_at_the_uid_still_puts_back_gids_and_groups(faults_so: Path) -> None:
    # setreuid that ignores its real argument: the way back cannot reset the
    # saved uid, but the gid and groups steps after it still must run.
    out = run_json(
        "import json, os\n"
        "from uidprobe.privileges import Switcher, VerificationError\n"
        "sw = Switcher({'HASSETREUID': 1, 'HASSETREGID': 1})\n"
        "sw.become(1001, 1002, [5])\n"
        "try:\n"
        "    sw.restore()\n"
        "    error = None\n"
        "except VerificationError as e:\n"
        "    error = str(e)\n"
        "print(json.dumps({'error': error, 'gids': os.getresgid(), 'groups': os.getgroups(),\n"
        "    'switched': sw.switched}))\n",
        env={"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": "setreuid-ignores-real"},
    )
    assert out["error"].startswith("restoring failed: after setreuid(0, 0): saved uid is 1001, should be 0")
    assert "holding uids (0, 0, 1001), gids (0, 0, 0), groups ()" in out["error"]
    assert out["gids"] == [0, 0, 0] and out["groups"] == [] and out["switched"] is True


# --------------------------------------------------- filesystem ids, no /proc


def test_fsuid_is_checked_when_no_file_descriptor_can_be_opened(faults_so: Path) -> None:
    out = run_json(
        "import json, os, resource\n"
        "from uidprobe.privileges import Switcher, VerificationError, current_identity\n"
        f"sw = Switcher({ALL!r}); before = current_identity()\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir('/proc/self/fd')) - 1, hard))\n"
        "try:\n"
        "    open('/proc/self/status').close()\n"
        "    can_open = True\n"
        "except OSError:\n"
        "    can_open = False\n"
        "try:\n"
        "    sw.become(1001, 1002)\n"
        "    error = None\n"
        "except VerificationError as e:\n"
        "    error = str(e)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))\n"
        "print(json.dumps({'can_open': can_open, 'error': error, 'restored': current_identity() == before}))\n",
        env={"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": "fsuid-stays-root"},
    )
    assert out["can_open"] is False, "the fd limit did not bite: the test proves nothing"
    assert out["error"] is not None and "fsuid is 0, should be 1001" in out["error"]
    assert out["restored"]


NO_PROC_SWITCH = (
    "import json, os\n"
    "from uidprobe.privileges import Switcher, VerificationError\n"
    "out = {'proc': os.path.exists('/proc/self/status')}\n"
    "try:\n"
    f"    with Switcher({ALL!r}).as_user(1001, 1002) as inside:\n"
    "        out['fs'] = [inside.fsuid, inside.fsgid]\n"
    "    out['error'] = None\n"
    "except VerificationError as e:\n"
    "    out['error'] = str(e)\n"
    "out['uids'] = os.getresuid()\n"
    "print(json.dumps(out))\n"
)


def without_proc(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run python ``code`` in a mount namespace whose /proc is unmounted."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare")
    proc = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            'umount -l /proc && exec "$0" -c "$1"',
            sys.executable,
            code,
        ],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_without_proc_a_switch_still_reads_the_filesystem_ids() -> None:
    out = without_proc(NO_PROC_SWITCH)
    assert out == {"proc": False, "fs": [1001, 1002], "error": None, "uids": [0, 0, 0]}


def test_without_proc_an_fsuid_left_at_root_is_still_caught(faults_so: Path) -> None:
    out = without_proc(NO_PROC_SWITCH, env={"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": "fsuid-stays-root"})
    assert out["proc"] is False
    assert out["error"] is not None and "fsuid is 0, should be 1001" in out["error"]
    assert out["uids"] == [0, 0, 0]


# ------------------------------------------------------------ fork failure

PIDS_ROOT = Path("/sys/fs/cgroup/pids")


@contextlib.contextmanager
def pids_cgroup(limit: int) -> Iterator[list[str]]:
    """A command prefix that runs its command in a pids cgroup allowing
    ``limit`` processes and threads, the command itself included."""
    if not (PIDS_ROOT / "cgroup.procs").exists() or not os.access(PIDS_ROOT, os.W_OK):
        pytest.skip("needs a writable cgroup v1 pids hierarchy at /sys/fs/cgroup/pids")
    group = PIDS_ROOT / f"uidprobe-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "pids.max").write_text(str(limit))
        yield ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh"]
    finally:
        group.rmdir()  # empty again: its processes have exited


@pytest.fixture
def pids_limit() -> Iterator[list[str]]:
    """One process allowed: the command itself can run, but cannot fork or spawn."""
    with pids_cgroup(1) as prefix:
        yield prefix


VERDICTS_JSON = "import json, uidprobe\nprint(json.dumps({n: r.verdict for n, r in uidprobe.probe().items()}))\n"


def test_a_pids_limit_with_room_for_two_children_still_gets_every_uid_and_gid_verdict() -> None:
    # The caller, its runner and two children: the engine forks a window of
    # children at once, and where the limit refuses one it waits for those
    # running and tries again, instead of leaving probes undetermined.
    free = run_python(VERDICTS_JSON)
    with pids_cgroup(4) as prefix:
        limited = run_python(VERDICTS_JSON, prefix=prefix)
    assert free.returncode == 0 and limited.returncode == 0, limited.stderr
    # THREAD_CREDENTIALS also needs a thread inside its child, which the limit
    # may refuse while another child runs: it may honestly be undetermined.
    got, want = json.loads(limited.stdout), json.loads(free.stdout)
    assert got.pop("THREAD_CREDENTIALS") in (want.pop("THREAD_CREDENTIALS"), None)
    assert got == want


def test_check_under_a_pids_limit_is_undetermined_with_the_errno(pids_limit: list[str]) -> None:
    proc = run_cli("check", "USESETEUID", prefix=pids_limit)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "undetermined" in proc.stdout and "EAGAIN" in proc.stdout
    assert proc.stderr == ""


@pytest.mark.parametrize(
    ("command", "code"),
    [([], 2), (["show"], 3), (["--json"], 2)],  # 2: every verdict undetermined; 3: no valid store
)
def test_other_commands_under_a_pids_limit_print_normally(pids_limit: list[str], command: list[str], code: int) -> None:
    proc = run_cli(*command, prefix=pids_limit, env={"UIDPROBE_STORE": "/nonexistent/verdicts"})
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and "EAGAIN" in proc.stdout


def test_import_config_under_a_pids_limit_gives_safe_zeros(pids_limit: list[str]) -> None:
    proc = run_python(
        "import json, uidprobe.config as c\nprint(json.dumps([c.SOURCE, c.USESETEUID, c.REASON]))\n",
        prefix=pids_limit,
        env={"UIDPROBE_STORE": "/nonexistent/verdicts"},
    )
    assert proc.returncode == 0, proc.stderr
    source, value, _ = json.loads(proc.stdout)
    assert value == 0 and source in ("probe", "default")


# ------------------------------------------------------------ fake roots


def fakeroot() -> list[str]:
    path = shutil.which("fakeroot")
    if path is None:
        pytest.skip("needs Debian's fakeroot (.ci/run installs it)")
    return [path]


def test_under_fakeroot_as_root_no_probe_believes_the_emulation() -> None:
    proc = run_cli("--json", prefix=fakeroot())
    assert proc.returncode == 2, proc.stderr  # every observed verdict undetermined
    results = json.loads(proc.stdout)
    observed = {n: r for n, r in results.items() if isinstance(r, dict) and r["kind"] == "observed"}
    assert {r["verdict"] for r in observed.values()} == {None}
    assert all("emulated root such as fakeroot" in r["reason"] for r in observed.values())


def test_without_fakeroot_the_same_probes_say_yes() -> None:
    # The control for the test above: the undetermined comes from fakeroot.
    proc = run_cli("check", "USESETEUID")
    assert proc.returncode == 0, proc.stdout


def as_nobody_with_system_python(*args: str, prefix: list[str]) -> subprocess.CompletedProcess[str]:
    """``python3 -m uidprobe ARGS`` as nobody with Debian's interpreter (pyenv's
    cannot start as another user) and this installation of uidprobe."""
    import uidprobe

    system = "/usr/bin/python3"
    site = str(Path(uidprobe.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": site}
    check = subprocess.run(
        [*AS_NOBODY, system, "-c", "import uidprobe._engine"], env=env, capture_output=True, check=False
    )
    if not os.access(system, os.X_OK) or check.returncode != 0:
        pytest.skip(f"nobody cannot run {system} with uidprobe from {site}")
    return subprocess.run(
        [*AS_NOBODY, *prefix, system, "-m", "uidprobe", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",
    )


def test_under_fakeroot_as_nobody_the_reason_names_the_emulation() -> None:
    proc = as_nobody_with_system_python("check", "USESETEUID", prefix=fakeroot())
    assert proc.returncode == 2, proc.stderr
    assert "the C library reports real uid 0 but the kernel holds 65534" in proc.stdout


def test_a_switch_under_fakeroot_is_refused_by_the_kernel_read_back() -> None:
    proc = run_python(
        "import json, os\n"
        "from uidprobe.privileges import Switcher, VerificationError\n"
        "try:\n"
        f"    Switcher({ALL!r}).become(1001, 1001)\n"
        "    error = None\n"
        "except VerificationError as e:\n"
        "    error = str(e)\n"
        "print(json.dumps(error))\n",
        prefix=fakeroot(),
    )
    assert proc.returncode == 0, proc.stderr
    error = json.loads(proc.stdout)
    assert error is not None and "should be" in error


# ------------------------------------------------------- a lying setup call


def test_a_setresuid_that_lies_is_its_own_verdicts_no_and_names_the_call(faults_so: Path) -> None:
    proc = run_cli(
        "check",
        "HASSETRESUID",
        "--uids",
        "1,2,3",
        env={"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": "setresuid-ignored"},
    )
    assert proc.returncode == 1, proc.stdout
    assert "after setresuid(-1, 2, -1)" in proc.stdout


def test_a_setresuid_that_lies_is_not_used_to_set_up_the_other_probes(faults_so: Path) -> None:
    proc = run_cli(
        "explain",
        "USESETEUID",
        "--uids",
        "1,2,3",
        env={"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": "setresuid-ignored"},
    )
    assert proc.returncode == 0
    assert "USESETEUID: yes" in proc.stdout and "setreuid(1, 0) [setup" in proc.stdout


def test_configure_under_a_pids_limit_writes_nothing_and_leaves_the_store_as_it_was(
    pids_limit: list[str], tmp_path: Path
) -> None:
    # A child that could not be forked (EAGAIN) shows nothing about the
    # machine: storing its 0 would keep a passing shortage as a platform fact
    # until the next kernel or C library upgrade (--if-stale trusts it).
    tmp_path.chmod(0o755)
    path = tmp_path / "verdicts"
    path.write_bytes(b"the previous store\n")
    proc = run_cli("configure", "--store", str(path), prefix=pids_limit)
    assert proc.returncode == 75, proc.stdout + proc.stderr
    assert path.read_bytes() == b"the previous store\n"
    assert "nothing written" in proc.stderr and "EAGAIN" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
