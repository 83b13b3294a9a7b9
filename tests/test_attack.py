"""Failing tests from the adversarial review of issue #11 (branch ``attack``).

Each runs real processes; anything that changes ids does so in a subprocess.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from helpers import requires_root, run_python
from uidprobe.engine import default_engine

pytestmark = requires_root

HERE = Path(__file__).resolve().parent
RES = {"HASSETRESUID": 1, "HASSETRESGID": 1}


def run_json(code: str, **kwargs: Any) -> dict[str, Any]:
    proc = run_python(code, **kwargs)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def build(name: str, tmp_path: Path) -> Path:
    if shutil.which("cc") is None:
        pytest.skip("needs cc")
    out = tmp_path / (name + ".so")
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-O1", "-o", str(out), str(HERE / "attack_preloads" / (name + ".c")), "-ldl"],
        check=True,
    )
    return out


# One-shot alarms at random delays, so that they land everywhere in as_user.
# ARMED keeps the harness's own bytecode out of reach of the raising handler.
ESCAPE = """
import json, os, random, signal
from uidprobe.privileges import Switcher
class Alarm(Exception): pass
ARMED = False
def boom(*a):
    if ARMED:
        raise Alarm
sw = Switcher({values!r})
before = os.getresuid()
with sw.as_user(1000, 1000, [1000]): pass
signal.signal(signal.SIGALRM, boom)
hits = in_flight = unknown = stuck = 0
for i in range({n}):
    try:
        ARMED = True
        signal.setitimer(signal.ITIMER_REAL, random.uniform(0.000001, 0.0002))
        with sw.as_user(1000, 1000, [1000]):
            pass
        ARMED = False
    except Alarm:
        ARMED = False
        hits += 1
        # The exception is propagating out of the with statement.
        if os.getresuid() != before:
            in_flight += 1
            if not sw.switched:
                unknown += 1
    ARMED = False
    signal.setitimer(signal.ITIMER_REAL, 0)
    # The exception is gone: the context manager has been freed.
    if os.getresuid() != before or sw.switched:
        stuck += 1
        if sw.switched:
            sw.restore()
signal.signal(signal.SIGALRM, signal.SIG_IGN)
print(json.dumps({{"hits": hits, "in_flight": in_flight, "unknown": unknown, "stuck": stuck}}))
"""


@pytest.mark.slow
def test_an_exception_from_a_signal_handler_never_leaves_as_user_with_an_unknown_or_lasting_switch() -> None:
    # One-shot alarms at random points of as_user.  CPython cannot guard the
    # instant the interpreter enters __exit__ (a pure-Python __exit__ starts
    # with a check for pending signal handlers; on 3.9/3.10 so does every
    # bytecode of the with statement itself), so an alarm landing exactly
    # there propagates while still switched.  What must hold: the switch is
    # then still recorded (restore() knows it), and it is undone as soon as
    # the exception is released, without the caller doing anything.
    out = run_json(ESCAPE.format(values=RES, n=20000))
    assert out["hits"] > 1000
    assert out["unknown"] == 0, f"{out['unknown']} alarms left a switch the Switcher did not know"
    assert out["stuck"] == 0, f"{out['stuck']} switches outlived the exception that interrupted them"


RESTORING_HANDLER = """
import json, os, random, signal
from uidprobe.privileges import Switcher, PrivilegeError
sw = Switcher({values!r})
before = (os.getresuid(), os.getresgid(), os.getgroups())
with sw.as_user(1000, 1000, [1000]): pass
def handler(*a):
    # e.g. a SIGTERM/SIGHUP handler that gets root back to clean up
    if sw.switched:
        sw.restore()
signal.signal(signal.SIGALRM, handler)
unknown = 0
for i in range({n}):
    signal.setitimer(signal.ITIMER_REAL, random.uniform(0.000001, 0.0003))
    try:
        with sw.as_user(1000, 1000, [1000]):
            pass
    except PrivilegeError:
        pass
    signal.setitimer(signal.ITIMER_REAL, 0)
    if (os.getresuid(), os.getresgid(), os.getgroups()) != before and not sw.switched:
        unknown += 1
        os.setresuid(*before[0]); os.setresgid(*before[1]); os.setgroups(before[2])
signal.signal(signal.SIGALRM, signal.SIG_IGN)
print(json.dumps({{"unknown": unknown}}))
"""


@pytest.mark.slow
def test_a_handler_that_restores_never_leaves_an_identity_the_switcher_does_not_know() -> None:
    # The handler's restore() lands after _enter recorded the switch but
    # before the C call: restore() succeeds (nothing switched yet) and clears
    # _active, then the forward switch runs.  The with block exits "normally"
    # as euid 1000, sw.switched is False and restore() refuses.
    out = run_json(RESTORING_HANDLER.format(values=RES, n=40000))
    assert out["unknown"] == 0


def test_a_drop_with_keepcaps_locked_on_still_empties_the_capability_sets() -> None:
    # SECBIT_KEEP_CAPS | SECBIT_KEEP_CAPS_LOCKED (0x30): prctl(PR_SET_KEEPCAPS, 0)
    # fails, the clearing plan stops there, and capset (always allowed) never runs:
    # the process raises "exit now" holding every permitted capability.
    out = run_json(
        "import ctypes, json\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.prctl(28, 0x30, 0, 0, 0) == 0\n"
        "from uidprobe.privileges import Switcher, VerificationError, current_caps\n"
        "try:\n"
        f"    Switcher({RES!r}).drop_permanently(65534, 65534)\n"
        "    raised = False\n"
        "except VerificationError:\n"
        "    raised = True\n"
        "c = current_caps()\n"
        "print(json.dumps({'raised': raised, 'prm': c.permitted, 'eff': c.effective}))\n"
    )
    assert out == {"raised": True, "prm": 0, "eff": 0}


def test_a_preload_that_interposes_syscall_cannot_make_a_probe_say_yes(tmp_path: Path) -> None:
    # The "kernel" read-back goes through syscall(), a C library function a
    # preload can interpose.  This one emulates every set*id call in memory
    # (the kernel's ids never change) and answers SYS_getresuid & co. from it.
    liar = build("syscall_liar", tmp_path)
    if not default_engine().built.raw_syscalls:
        pytest.skip("this build reads the kernel's ids through syscall(), which a preload can answer (documented)")
    proc = run_python(
        "import json, uidprobe\n"
        "print(json.dumps({n: uidprobe.probe(n).verdict for n in ('SETUID_PERMANENT', 'USESETEUID')}))\n",
        env={"LD_PRELOAD": str(liar)},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"SETUID_PERMANENT": None, "USESETEUID": None}


def test_a_preload_that_interposes_syscall_cannot_pass_a_permanent_drop(tmp_path: Path) -> None:
    liar = build("syscall_liar", tmp_path)
    if not default_engine().built.raw_syscalls:
        pytest.skip("this build reads the kernel's ids through syscall(), which a preload can answer (documented)")
    out = run_json(
        "import json\n"
        "from uidprobe.privileges import Switcher, VerificationError\n"
        "try:\n"
        f"    Switcher({RES!r}).drop_permanently(65534, 65534)\n"
        "    raised = False\n"
        "except VerificationError:\n"
        "    raised = True\n"
        "uid = [l.split()[1:] for l in open('/proc/self/status') if l.startswith('Uid:')][0]\n"
        "print(json.dumps({'raised': raised, 'kernel_uids': uid}))\n",
        env={"LD_PRELOAD": str(liar), "LIAR_CAPS": "1"},
    )
    assert out["raised"] or out["kernel_uids"] == ["65534"] * 4, out


def test_a_permanent_drop_leaves_no_other_thread_root(tmp_path: Path) -> None:
    # A C library whose set*id calls change only the calling thread (Linux
    # credentials are per thread; no setxid broadcast).  The read-back and the
    # regain check look at the calling thread only.
    lib = build("per_thread_setid", tmp_path)
    out = run_json(
        "import json, os, threading\n"
        "from uidprobe.privileges import Switcher, VerificationError\n"
        "ev = threading.Event(); tid = []\n"
        "t = threading.Thread(target=lambda: (tid.append(threading.get_native_id()), ev.wait())); t.start()\n"
        "while not tid: pass\n"
        "try:\n"
        f"    Switcher({RES!r}).drop_permanently(65534, 65534)\n"
        "    raised = None\n"
        "except VerificationError as e:\n"
        "    raised = str(e)\n"
        "uid = [l.split()[1:] for l in open(f'/proc/self/task/{tid[0]}/status') if l.startswith('Uid:')][0]\n"
        "name = open(f'/proc/self/task/{tid[0]}/comm').read().strip()\n"
        "ev.set(); t.join()\n"
        "print(json.dumps({'raised': raised, 'other_thread_uids': uid, 'tid': tid[0], 'name': name}))\n",
        env={"LD_PRELOAD": str(lib)},
    )
    assert out["raised"] or out["other_thread_uids"] == ["65534"] * 4, out
    if out["raised"] and "thread" in out["raised"]:
        # The refusal names the thread that kept root: its id and its name.
        assert f"thread {out['tid']} ({out['name']!r}) still holds uids [0, 0, 0, 0]" in out["raised"], out
