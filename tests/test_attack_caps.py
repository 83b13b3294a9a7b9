"""Attacks on issue 19's work (capabilities and gids in the switch and the trust rule), with real processes.

Each test is a finding: it failed before the fix that came with it.  Every
switch runs in a subprocess (under ``setpriv`` where the securebits or the
ambient set matter); the threads' credentials are read from the kernel's
per-thread accounts in /proc, independently of uidprobe.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from helpers import requires_other_user, requires_root, run_python
from uidprobe import store, trust


def thread(tid: int) -> str:
    """The pattern a refusal names a thread by: its id and its name."""
    return rf"thread {tid} \('[^']*'\) "


pytestmark = [
    requires_root,
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv"),
]

VALUES = {"HASSETRESUID": 1, "HASSETRESGID": 1, "THREAD_CREDENTIALS": 1}
TESTS = str(Path(__file__).parent)
AMBIENT = ["setpriv", "--inh-caps", "+setuid,+setgid", "--ambient-caps", "+setuid,+setgid"]


def run_json(code: str, prefix: list[str] | None = None) -> dict[str, Any]:
    proc = run_python(code, prefix=prefix, env={"PYTHONPATH": TESTS})
    assert proc.returncode == 0, f"exit status {proc.returncode}: {proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


#: A worker thread prepared by ``{setup}``, then a process-scope switch in
#: the main thread; both threads' credentials before, inside and after.
OTHER_THREAD = """
import ctypes, json, threading
from procinfo import lower_effective
from uidprobe.privileges import PrivilegeError, Switcher

def status(tid):
    with open(f"/proc/self/task/{{tid}}/status") as f:
        keep = ("Uid", "Gid", "Groups", "CapEff", "CapPrm", "CapInh", "CapAmb")
        return {{k: v.split() for k, _, v in (line.partition(":") for line in f) if k in keep}}

ready, stop = threading.Event(), threading.Event()
def worker():
    own = None
{setup}
    ready.set()
    stop.wait()
    if own is not None:
        own.restore()
t = threading.Thread(target=worker)
t.start()
ready.wait()
me = threading.get_native_id()
before = {{"main": status(me), "worker": status(t.native_id)}}
inside = error = None
try:
    with Switcher({values!r}).as_user(1000, 1000):
        inside = status(t.native_id)
except PrivilegeError as e:
    error = str(e)
after = {{"main": status(me), "worker": status(t.native_id)}}
stop.set()
t.join()
print(json.dumps({{"tid": t.native_id, "before": before, "inside": inside, "error": error, "after": after}}))
"""

#: What the worker does before the switch, what it holds then, and the
#: refusal that must name it.  Before the fix: the C library's broadcast
#: aborted the process (a thread without CAP_SETUID); the worker got
#: CAP_DAC_OVERRIDE back in effect after the restore; it kept its ambient
#: CAP_SETUID while uid 1000 (a program it ran would have had it); its own
#: per-thread switch to uid 1000 was overwritten with root.
WORKERS = {
    "lacks CAP_SETUID": ("    lower_effective(1 << 7)", [], "lacks CAP_SETUID in its effective set"),
    "effective below permitted": (
        "    lower_effective(1 << 1)",
        [],
        "has its effective set below its permitted set (CapEff=0x1fffefffffd, CapPrm=0x1fffeffffff)",
    ),
    "ambient": ("    pass", AMBIENT, "holds ambient CAP_SETGID, CAP_SETUID"),
    "switched on its own": (
        f"    own = Switcher({VALUES!r}, scope='thread')\n    own.become(1000, 1000)",
        [],
        "holds uids 0 1000 0 1000 and gids 0 1000 0 1000 (real, effective, saved, filesystem; "
        "this thread: 0 0 0 0 and 0 0 0 0)",
    ),
}


@pytest.mark.parametrize("holding", WORKERS)
def test_a_process_scope_switch_is_refused_before_it_starts_when_another_thread_would_not_follow_it(
    holding: str,
) -> None:
    setup, prefix, why = WORKERS[holding]
    out = run_json(OTHER_THREAD.format(setup=setup, values=VALUES), prefix)
    assert out["error"] is not None, f"the switch went ahead; the worker held {out['inside']} inside"
    assert re.search(thread(out["tid"]) + re.escape(why), out["error"]), out["error"]
    assert "nothing was changed" in out["error"]
    assert out["inside"] is None
    assert out["after"] == out["before"]


def test_a_thread_whose_own_securebits_keep_its_capabilities_is_caught_after_the_switch_and_undone() -> None:
    # Securebits are per thread and /proc does not show them: only the
    # switch's outcome can.  Before the fix only the calling thread's
    # securebits decided whether the other threads were looked at.
    setup = "    assert ctypes.CDLL(None).prctl(28, 1 << 2, 0, 0, 0) == 0  # PR_SET_SECUREBITS: NO_SETUID_FIXUP"
    out = run_json(OTHER_THREAD.format(setup=setup, values=VALUES))
    assert out["error"] is not None, f"the switch went ahead; the worker held {out['inside']} inside"
    assert "the switch was undone" in out["error"]
    assert re.search(
        thread(out["tid"])
        + re.escape("still held CapEff=0x1fffeffffff: the kernel kept its effective set (SECBIT_NO_SETUID_FIXUP"),
        out["error"],
    )
    assert out["after"] == out["before"]


#: The main thread (prepared by ``{setup}``) switches in process scope; a
#: worker (prepared by ``{worker}``) calls ``restore()``; then the main
#: thread restores if it is still switched.
RESTORE_ELSEWHERE = """
import ctypes, json, os, threading
from procinfo import _cap_binding, capget_sets, lower_effective, status_caps
from uidprobe.privileges import PrivilegeError, Switcher, VerificationError

def drop_permitted(mask):
    _, libc, h, d = _cap_binding()
    assert libc.capget(ctypes.byref(h), d) == 0
    for half in (0, 1):
        keep = ~(mask >> 32 * half) & 0xFFFFFFFF
        d[half].effective &= keep
        d[half].permitted &= keep
    assert libc.capset(ctypes.byref(h), d) == 0

sw = Switcher({values!r})
# Each phase has an event of its own: one event cleared and set again
# between phases would race (the worker's clear after the main thread's set).
ready, go, done, finish = (threading.Event() for _ in range(4))
out = {{}}
def worker():
{worker}
    out["worker_before"] = status_caps()
    ready.set()  # measured before the switch, not while the main thread is switched
    go.wait()
    try:
        sw.restore()
        out["error"] = None
    except (PrivilegeError, VerificationError) as e:
        out["error"] = f"{{type(e).__name__}}: {{e}}"
    out["worker_uids"] = os.getresuid()
    done.set()
    finish.wait()
    out["worker_after"] = status_caps()
t = threading.Thread(target=worker)
t.start()
ready.wait()
{setup}
before = [status_caps(), capget_sets(), os.getresuid()]
sw.become(1000, 1000)
go.set()
done.wait()
out["switched_after_worker"] = sw.switched
out["main_after_worker"] = status_caps()
if sw.switched:
    sw.restore()
out["main_same"] = [status_caps(), capget_sets(), os.getresuid()] == before
finish.set()
t.join()
out["tid"] = threading.get_native_id()
print(json.dumps(out))
"""


def test_restore_from_another_thread_refuses_when_only_the_switching_thread_can_raise_its_sets_again() -> None:
    # The main thread put CAP_DAC_OVERRIDE out of effect for itself; the
    # switch lowered its effective set by capset, which changes the calling
    # thread only.  Before the fix the worker's restore() ran that capset in
    # the worker (lowering the worker's set) and verified the worker, while
    # the kernel's fixup gave the main thread CAP_DAC_OVERRIDE back in effect.
    code = RESTORE_ELSEWHERE.format(values=VALUES, setup="lower_effective(1 << 1)", worker="    pass")
    out = run_json(code)
    assert out["error"] is not None and out["error"].startswith("PrivilegeError: ")
    assert f"only thread {out['tid']} can raise them again" in out["error"]
    assert out["switched_after_worker"] and out["worker_uids"] == [0, 1000, 0]
    assert out["main_same"]
    assert out["worker_after"] == out["worker_before"]


def test_restore_from_another_thread_with_a_permitted_set_of_its_own_is_verified_for_that_thread() -> None:
    # Nothing needs capset here: the kernel's fixup puts every thread's sets
    # back.  Before the fix the worker's restore() checked the worker against
    # the main thread's sets and raised VerificationError on a sound restore.
    code = RESTORE_ELSEWHERE.format(values=VALUES, setup="", worker="    drop_permitted(1 << 13)  # CAP_NET_RAW")
    out = run_json(code)
    assert out["error"] is None
    assert not out["switched_after_worker"] and out["worker_uids"] == [0, 0, 0]
    assert out["main_same"]
    assert out["worker_after"] == out["worker_before"]
    assert out["worker_before"]["CapPrm"] & 1 << 13 == 0


# ------------------------------------------------------------------ trust

IMPORT_CONFIG = (
    "import json, os\n"
    "import uidprobe.config as c\n"
    "print(json.dumps({'ids': [os.getresuid(), os.getresgid(), os.getgroups()], 'source': c.SOURCE,\n"
    "    'reason': c.REASON}))\n"
)


@requires_other_user
def test_a_process_whose_gids_are_all_0_does_not_trust_a_store_of_uid_1000(store_of_1000: Path) -> None:
    # All equal, but 0 is root's group: what the process reads now it may
    # act on with group root's file access (/etc/shadow's group, root's
    # group-writable files).  Before the fix it loaded the forged store.
    prefix = ["setpriv", "--reuid=1000", "--regid=0", "--clear-groups"]
    proc = run_python(IMPORT_CONFIG, prefix=prefix, env={store.ENV_VAR: str(store_of_1000)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ids"] == [[1000, 1000, 1000], [0, 0, 0], []]
    assert out["source"] != "store"
    assert (
        f"store unsafe: directory {store_of_1000.parent} is owned by uid 1000, not root "
        "(this process holds gid 0, root's group: only root's files are trusted)"
    ) in out["reason"]


@pytest.mark.parametrize("gids", [(0, 0, 0), (1000, 0, 1000)])
def test_the_refusal_names_gid_0_as_root_s_group(gids: tuple[int, int, int], store_of_1000: Path) -> None:
    path = store_of_1000.parent.parent / "verdicts-of-1000"
    shutil.copyfile(store_of_1000, path)
    os.chown(path, 1000, 1000)
    try:
        loaded = store.load(str(path), reader=trust.Reader(uids=(1000, 1000, 1000), gids=gids, caps=0))
    finally:
        path.unlink()
    why = "this process holds gid 0, root's group" if len(set(gids)) == 1 else f"this process's gids differ {gids}"
    assert loaded.reason == f"unsafe: {path} is owned by uid 1000, not root ({why}: only root's files are trusted)"


@requires_other_user
def test_a_process_in_supplementary_group_0_does_not_trust_a_store_of_uid_1000(store_of_1000: Path) -> None:
    # Supplementary groups grant file access like the gids: a member of
    # group root holds what uid 1000 alone does not.  Before the fix only
    # the three gids were looked at.
    prefix = ["setpriv", "--reuid=1000", "--regid=1000", "--groups=0"]
    proc = run_python(IMPORT_CONFIG, prefix=prefix, env={store.ENV_VAR: str(store_of_1000)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ids"] == [[1000, 1000, 1000], [1000, 1000, 1000], [0]]
    assert out["source"] != "store"
    assert (
        f"store unsafe: directory {store_of_1000.parent} is owned by uid 1000, not root "
        "(this process holds gid 0, root's group: only root's files are trusted)"
    ) in out["reason"]


# ------------------------------------------------------------ leftovers


def test_a_group_listed_many_times_counts_once_toward_the_group_limit() -> None:
    # 5,000 entries, two groups: before the fix the switch was refused as
    # "5001 supplementary groups exceed the limit".
    code = (
        "import json, os\n"
        "from uidprobe.privileges import Switcher\n"
        f"with Switcher({VALUES!r}).as_user(1000, 1000, [1001] * 5000 + [1002]) as who:\n"
        "    held = sorted(os.getgroups())\n"
        "print(json.dumps({'reported': who.groups, 'held': held}))\n"
    )
    out = run_json(code)
    assert out == {"reported": [1001, 1002], "held": [1001, 1002]}


def test_a_thread_that_kept_its_capabilities_through_a_permanent_drop_is_named_for_what_it_holds() -> None:
    # PR_SET_KEEPCAPS is per thread: the worker's ids drop with the others
    # and the kernel leaves its permitted set.  Before the fix the error
    # blamed a C library that "changes one thread at a time", though every
    # thread's ids had changed.
    code = (
        "import ctypes, json, threading\n"
        "from uidprobe.privileges import Switcher, VerificationError\n"
        "ready, stop = threading.Event(), threading.Event()\n"
        "def worker():\n"
        "    assert ctypes.CDLL(None).prctl(8, 1, 0, 0, 0) == 0  # PR_SET_KEEPCAPS, this thread only\n"
        "    ready.set()\n"
        "    stop.wait()\n"
        "t = threading.Thread(target=worker)\n"
        "t.start()\n"
        "ready.wait()\n"
        "try:\n"
        f"    Switcher({VALUES!r}).drop_permanently(65534, 65534)\n"
        "    error = None\n"
        "except VerificationError as e:\n"
        "    error = str(e)\n"
        "name = open(f'/proc/self/task/{t.native_id}/comm').read().strip()\n"
        "stop.set()\n"
        "t.join()\n"
        "print(json.dumps({'tid': t.native_id, 'name': name, 'error': error}))\n"
    )
    out = run_json(code)
    assert out["error"] == (
        f"after the permanent drop, thread {out['tid']} ({out['name']!r}) holds the dropped ids "
        "(uids 65534, gids 65534, no groups) but still holds capabilities (CapPrm=0x1fffeffffff CapEff=0x0 "
        "CapAmb=0x0): the kernel kept them for that thread (PR_SET_KEEPCAPS or a securebit set in it); exit now"
    )


# ------------------------------------------------- a cached plan, securebits changed since

#: One switch (its plan is cached), then ``prctl(PR_SET_SECUREBITS, {bits})``,
#: then the same switch again.
SECUREBITS_CHANGED = """
import ctypes, json
from procinfo import status_caps
from uidprobe.privileges import PrivilegeError, Switcher, VerificationError

sw = Switcher({values!r})
with sw.as_user(1000, 1000):
    pass
assert ctypes.CDLL(None).prctl(28, {bits}, 0, 0, 0) == 0  # PR_SET_SECUREBITS
before = status_caps()
inside = error = None
try:
    with sw.as_user(1000, 1000):
        inside = status_caps()
except (PrivilegeError, VerificationError) as e:
    error = f"{{type(e).__name__}}: {{e}}"
print(json.dumps({{"before": before, "inside": inside, "error": error, "after": status_caps()}}))
"""


def test_a_cached_plan_made_before_no_setuid_fixup_was_set_is_made_again_and_the_switch_works() -> None:
    # Before the fix the cached plan expected the kernel's fixup to empty the
    # effective set, the read-back saw it full, and the switch was rolled
    # back with VerificationError: a sound switch refused.
    out = run_json(SECUREBITS_CHANGED.format(values=VALUES, bits=1 << 2))
    assert out["error"] is None
    assert out["inside"]["CapEff"] == 0 and out["inside"]["CapPrm"] == out["before"]["CapPrm"] != 0
    assert out["after"] == out["before"]


def test_a_cached_plan_with_an_ambient_set_is_refused_once_no_cap_ambient_raise_is_set() -> None:
    # The refusal a fresh plan makes (restore() could not raise the ambient
    # set again).  Before the fix the cached plan skipped it: the switch put
    # the ambient set away, restore() failed with EPERM and the process had
    # lost CAP_SETUID and CAP_SETGID from its ambient set for good.
    out = run_json(SECUREBITS_CHANGED.format(values=VALUES, bits=1 << 6), AMBIENT)
    assert out["error"] is not None and out["error"].startswith("PrivilegeError: ")
    assert "SECBIT_NO_CAP_AMBIENT_RAISE" in out["error"]
    assert out["inside"] is None
    assert out["after"] == out["before"] and out["before"]["CapAmb"] == 0xC0


def test_a_switch_whose_thread_exited_can_be_restored_from_another_thread() -> None:
    # The worker lowered CAP_DAC_OVERRIDE out of its own effective set, so
    # its switch lowered its sets by capset, then it ended without
    # restoring.  Only that thread could raise its sets again, and it is
    # gone: the main thread restores the ids, checked against its own sets.
    # Before the fix restore() refused for ever ("only thread N can raise
    # them again") and the process stayed uid 1000.
    code = (
        "import json, os, threading\n"
        "from procinfo import lower_effective, status_caps\n"
        "from uidprobe.privileges import Switcher\n"
        f"sw = Switcher({VALUES!r})\n"
        "before = [status_caps(), os.getresuid()]\n"
        "def worker():\n"
        "    lower_effective(1 << 1)\n"
        "    sw.become(1000, 1000)\n"
        "t = threading.Thread(target=worker)\n"
        "t.start()\n"
        "t.join()\n"
        "while len(os.listdir('/proc/self/task')) > 1:  # the kernel's end of the thread follows join()\n"
        "    pass\n"
        "switched = [sw.switched, os.getresuid()]\n"
        "sw.restore()\n"
        "print(json.dumps({'switched': switched, 'restored': [status_caps(), os.getresuid()] == before}))\n"
    )
    out = run_json(code)
    assert out["switched"] == [True, [0, 1000, 0]]
    assert out["restored"]


def test_a_permanent_drop_is_refused_before_it_starts_when_another_thread_could_not_make_the_call() -> None:
    # Before the fix glibc aborted the process in the middle of the drop
    # (SIGABRT): the call failed in the worker and succeeded in the others.
    code = (
        "import json, os, threading\n"
        "from procinfo import identity, lower_effective\n"
        "from uidprobe.privileges import PrivilegeError, Switcher\n"
        "ready, stop = threading.Event(), threading.Event()\n"
        "def worker():\n"
        "    lower_effective(1 << 7)  # CAP_SETUID out of effect, in this thread\n"
        "    ready.set()\n"
        "    stop.wait()\n"
        "t = threading.Thread(target=worker)\n"
        "t.start()\n"
        "ready.wait()\n"
        "before = identity()\n"
        "try:\n"
        f"    Switcher({VALUES!r}).drop_permanently(65534, 65534)\n"
        "    error = None\n"
        "except PrivilegeError as e:\n"
        "    error = str(e)\n"
        "stop.set()\n"
        "t.join()\n"
        "print(json.dumps({'tid': t.native_id, 'error': error, 'unchanged': identity() == before}))\n"
    )
    out = run_json(code)
    assert out["error"] is not None
    assert out["error"].startswith("the drop was refused before it started (nothing was changed): ")
    assert re.search(thread(out["tid"]) + "lacks CAP_SETUID in its effective set", out["error"]), out["error"]
    assert out["unchanged"]
