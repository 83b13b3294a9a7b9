"""Privilege is more than uids: capability sets and gids count, in the switch and in trust.

A switch to a user other than root leaves no effective (and no ambient)
capability, whatever the securebits; restore brings back exactly the
starting sets.  Every case runs a real root process in a subprocess (under
``setpriv`` where the securebits or ambient set matter) and reads the sets
both from /proc and from capget(2) through the C library, independently of
uidprobe's own read-back.

A store owned by uid 1000 is trusted by a process that holds nothing beyond
uid 1000, and by no process that holds more (a gid 0, a capability): real
processes of uid 1000 made by setpriv import uidprobe.config.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import requires_other_user, requires_root, requires_thread_ops, run_python
from procinfo import capget_sets, status_caps
from uidprobe import store, trust
from uidprobe.privileges import current_identity

pytestmark = [
    requires_root,
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv"),
]

VALUES = {"HASSETRESUID": 1, "HASSETRESGID": 1, "THREAD_CREDENTIALS": 1}
TESTS = str(Path(__file__).parent)
SECBIT_NO_SETUID_FIXUP = 1 << 2
CAP_SETUID_SETGID = 1 << 6 | 1 << 7

#: The environments a root process may run in, as setpriv prefixes.
ENVIRONMENTS = {
    "plain": [],
    "no_setuid_fixup": ["setpriv", "--securebits", "+no_setuid_fixup"],
    "ambient": ["setpriv", "--inh-caps", "+setuid,+setgid", "--ambient-caps", "+setuid,+setgid"],
    "effective below permitted": [],  # CAP_DAC_OVERRIDE put out of effect (SWITCH's SETUP)
}
CAP_DAC_OVERRIDE = 1 << 1
#: What each environment does in the process itself before the switch.
SETUP = {"effective below permitted": f"lower_effective({CAP_DAC_OVERRIDE})"}

SWITCH = """
import json, os
from procinfo import capget_sets, lower_effective, securebits, status_caps
from uidprobe.privileges import Switcher

def sets():
    return {{"status": status_caps(), "capget": capget_sets()}}

# What the kernel alone does here: a bare change of the effective uid.
os.setresuid(-1, 1000, -1)
kernel_kept = status_caps()["CapEff"]
os.setresuid(-1, 0, -1)
{setup}
before = sets()
sw = Switcher({values!r}, scope={scope!r})
with sw.as_user(1000, 1000) as reached:
    inside = sets()
    uids = os.getresuid()
    try:
        os.close(os.open({path!r}, os.O_WRONLY))
        opened = "opened"
    except OSError as e:
        opened = e.strerror
print(json.dumps({{
    "securebits": securebits(), "kernel_kept": kernel_kept, "before": before, "inside": inside,
    "uids": uids, "opened": opened, "after": sets(),
    "reached": [reached.caps.effective, reached.caps.permitted, reached.caps.ambient],
}}))
"""


def run_json(code: str, prefix: list[str]) -> dict[str, Any]:
    proc = run_python(code, prefix=prefix, env={"PYTHONPATH": TESTS})
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def roots_secret() -> Iterator[str]:
    """A root-owned mode-0600 file in a directory every user may search."""
    d = Path(tempfile.mkdtemp(prefix="uidprobe-caps-", dir="/tmp"))
    try:
        d.chmod(0o755)
        secret = d / "secret"
        secret.write_text("root's\n")
        secret.chmod(0o600)
        yield str(secret)
    finally:
        shutil.rmtree(d)


@pytest.mark.parametrize("scope", ["process", "thread"])
@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_a_switch_to_a_user_holds_no_effective_capability_and_restore_brings_the_starting_sets_back(
    environment: str, scope: str, roots_secret: str
) -> None:
    code = SWITCH.format(values=VALUES, scope=scope, path=roots_secret, setup=SETUP.get(environment, ""))
    out = run_json(code, ENVIRONMENTS[environment])
    before, inside, after = out["before"], out["inside"], out["after"]
    # The environment is what it claims (else the case proves nothing).
    if environment == "no_setuid_fixup":
        assert out["securebits"] & SECBIT_NO_SETUID_FIXUP and out["kernel_kept"] == before["status"]["CapEff"] != 0
    if environment == "ambient":
        assert before["status"]["CapAmb"] == CAP_SETUID_SETGID
    if environment == "effective below permitted":
        # The kernel's fixup on the way back would make effective = permitted again.
        assert before["capget"]["CapEff"] == before["capget"]["CapPrm"] & ~CAP_DAC_OVERRIDE
    assert out["uids"] == [0, 1000, 0]
    # Inside: nothing effective, nothing ambient; the permitted set kept for the way back.
    assert inside["status"]["CapEff"] == inside["capget"]["CapEff"] == 0
    assert inside["status"]["CapAmb"] == 0
    assert inside["capget"]["CapPrm"] == before["capget"]["CapPrm"] != 0
    assert out["reached"] == [0, before["capget"]["CapPrm"], 0]
    assert out["opened"] == "Permission denied"
    # After: exactly the starting sets, ambient included (raised again only where it was).
    assert after == before


def test_a_process_scope_switch_under_no_setuid_fixup_with_another_thread_is_undone_and_refused() -> None:
    # The C library moves every thread's uids, the kernel keeps their
    # effective sets, and only the calling thread's can be lowered.
    code = (
        "import json, threading\n"
        "from procinfo import identity\n"
        "from uidprobe.privileges import PrivilegeError, Switcher\n"
        "stop = threading.Event(); t = threading.Thread(target=stop.wait); t.start()\n"
        "before = identity()\n"
        "try:\n"
        f"    with Switcher({VALUES!r}).as_user(1000, 1000):\n"
        "        error = None\n"
        "except PrivilegeError as e:\n"
        "    error = str(e)\n"
        "stop.set(); t.join()\n"
        "print(json.dumps({'error': error, 'restored': identity() == before}))\n"
    )
    out = run_json(code, ENVIRONMENTS["no_setuid_fixup"])
    assert out["error"] is not None and "the switch was undone" in out["error"]
    assert "still held CapEff=0x" in out["error"] and "scope='thread'" in out["error"]
    assert out["restored"]


def test_a_switch_that_could_not_raise_the_ambient_set_again_is_refused_before_it_starts() -> None:
    code = (
        "import ctypes, json\n"
        "from procinfo import identity\n"
        "from uidprobe.privileges import PrivilegeError, Switcher\n"
        "assert ctypes.CDLL(None).prctl(28, 1 << 6, 0, 0, 0) == 0  # PR_SET_SECUREBITS, NO_CAP_AMBIENT_RAISE\n"
        "before = identity()\n"
        "try:\n"
        f"    Switcher({VALUES!r}).become(1000, 1000)\n"
        "    error = None\n"
        "except PrivilegeError as e:\n"
        "    error = str(e)\n"
        "print(json.dumps({'error': error, 'unchanged': identity() == before}))\n"
    )
    out = run_json(code, ENVIRONMENTS["ambient"])
    assert out["error"] is not None and "SECBIT_NO_CAP_AMBIENT_RAISE" in out["error"]
    assert out["unchanged"]


def test_identity_reports_the_capability_sets_it_holds() -> None:
    caps = current_identity().caps
    assert caps is not None
    kernel, proc = capget_sets(), status_caps()
    assert (caps.effective, caps.permitted, caps.inheritable) == (
        kernel["CapEff"],
        kernel["CapPrm"],
        kernel["CapInh"],
    )
    assert caps.ambient == proc["CapAmb"]


# ------------------------------------------------------------------ trust

AS_1000 = ["setpriv", "--reuid=1000", "--clear-groups"]
#: Processes whose uids are all 1000, and what else they hold.
READERS = {
    "nothing else": [*AS_1000, "--regid=1000"],
    "gid 0": [*AS_1000, "--rgid=1000", "--egid=0"],  # a set-group-ID program: gids (1000, 0, 0)
    "ambient CAP_SETUID": [
        *AS_1000,
        "--regid=1000",
        "--inh-caps",
        "+setuid,+setgid",
        "--ambient-caps",
        "+setuid,+setgid",
    ],
}
WHY_NOT = {
    "gid 0": "this process's gids differ (1000, 0, 0): only root's files are trusted",
    "ambient CAP_SETUID": "this process holds CAP_SETGID, CAP_SETUID: only root's files are trusted",
}
IMPORT_CONFIG = (
    "import json, os\n"
    "import uidprobe.config as c\n"
    "print(json.dumps({'ids': [os.getresuid(), os.getresgid()], 'source': c.SOURCE, 'reason': c.REASON,\n"
    "    'HASSETRESUID': c.HASSETRESUID}))\n"
)


@requires_other_user
@pytest.mark.parametrize("holding", READERS)
def test_a_store_owned_by_1000_is_trusted_only_by_a_process_that_holds_nothing_beyond_uid_1000(
    holding: str, store_of_1000: Path
) -> None:
    proc = run_python(IMPORT_CONFIG, prefix=READERS[holding], env={store.ENV_VAR: str(store_of_1000)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ids"][0] == [1000, 1000, 1000]
    if holding == "nothing else":
        assert out["ids"][1] == [1000, 1000, 1000]
        assert out["source"] == "store" and out["HASSETRESUID"] == 0
    else:
        assert out["source"] != "store"
        home = store_of_1000.parent  # the walk meets 1000's directory first
        assert f"store unsafe: directory {home} is owned by uid 1000, not root ({WHY_NOT[holding]})" in out["reason"]


@pytest.mark.parametrize(
    ("gids", "caps", "why"),
    [
        ((1000, 1000, 1000), 0, None),
        ((1000, 0, 0), 0, "this process's gids differ (1000, 0, 0)"),
        ((1000, 1000, 1000), 1 << 7, "this process holds CAP_SETUID"),
        ((1000, 1000, 1000), 1 << 1 | 1 << 21, "this process holds CAP_DAC_OVERRIDE, CAP_SYS_ADMIN"),
        ((1000, 1000, 1000), None, "this process's capability sets cannot be read"),
    ],
)
def test_the_refusal_names_what_the_reader_holds_beyond_the_owner(
    gids: tuple[int, int, int], caps: int | None, why: str | None, store_of_1000: Path
) -> None:
    # The file of uid 1000 itself, in root's directory: the file's own check.
    path = store_of_1000.parent.parent / "verdicts-of-1000"
    shutil.copyfile(store_of_1000, path)
    os.chown(path, 1000, 1000)
    try:
        loaded = store.load(str(path), reader=trust.Reader(uids=(1000, 1000, 1000), gids=gids, caps=caps))
    finally:
        path.unlink()
    if why is None:
        assert loaded.valid
    else:
        assert loaded.reason == f"unsafe: {path} is owned by uid 1000, not root ({why}: only root's files are trusted)"


# ------------------------------------------------------- who may probe

PROBE = (
    "import json, uidprobe\n"
    "print(json.dumps({n: [r.verdict, r.reason] for n, r in uidprobe.probe(timeout=2).items()}))\n"
)


def test_a_process_whose_securebits_keep_capabilities_across_setuid_cannot_test() -> None:
    # Under SECBIT_NO_SETUID_FIXUP setuid(0) after setuid(1000) succeeds: the
    # probes would call a sound platform broken.
    out = run_json(PROBE, ENVIRONMENTS["no_setuid_fixup"])
    observed = {n: v for n, v in out.items() if n != "POSIX_SAVED_IDS"}
    assert observed and all(v == [None, observed["SETUID_PERMANENT"][1]] for v in observed.values())
    assert observed["SETUID_PERMANENT"][1].startswith("this process cannot test: SECBIT_NO_SETUID_FIXUP is set")


@requires_thread_ops
def test_a_thread_switched_on_its_own_is_judged_by_its_own_credentials_not_the_main_threads() -> None:
    code = (
        "import json, threading, uidprobe\n"
        "from uidprobe.privileges import Switcher\n"
        f"sw = Switcher({VALUES!r}, scope='thread')\n"
        "out = {}\n"
        "def work():\n"
        "    with sw.as_user(1000, 1000):\n"
        "        r = uidprobe.probe('HASSETRESUID', timeout=2)\n"
        "        out['switched'] = [r.verdict, r.reason]\n"
        "t = threading.Thread(target=work); t.start(); t.join()\n"
        "r = uidprobe.probe('HASSETRESUID', timeout=2)\n"
        "out['main'] = [r.verdict, r.reason]\n"
        "print(json.dumps(out))\n"
    )
    out = run_json(code, [])
    assert out["switched"] == [
        None,
        "this process cannot test: it is not root (euid 1000) and lacks CAP_SETUID; run it as root",
    ]
    assert out["main"][0] is True


def test_a_capability_set_that_does_not_verify_rolls_the_switch_back_to_the_starting_sets() -> None:
    # up_switch itself: a capset step whose read-back differs from what the
    # plan expects (an ambient set that is not there) is undone, and the
    # rollback is verified against the starting sets.
    code = (
        "import json\n"
        "from procinfo import capget_sets, status_caps\n"
        "from uidprobe.creds import CapSets, Expect, SwitchPlan, read_creds\n"
        "from uidprobe.engine import Op, Step\n"
        "from uidprobe.privileges import _cap_args\n"
        "start = read_creds(caps=True).caps\n"
        "before = [status_caps(), capget_sets()]\n"
        "lower = Step(Op.CAPS_SET, _cap_args(0, start.permitted, start.inheritable))\n"
        "wrong = Expect(caps=CapSets(0, start.permitted, start.inheritable, ambient=1 << 7))\n"
        "back = Step(Op.CAPS_SET, _cap_args(start.effective, start.permitted, start.inheritable))\n"
        "r = SwitchPlan([(lower, wrong)], [back]).run()\n"
        "same = [status_caps(), capget_sets()] == before\n"
        "print(json.dumps({'status': r.status.name, 'after_eff': r.after.caps.effective,\n"
        "    'now': list(r.now.caps.sets), 'start': list(start.sets), 'same': same}))\n"
    )
    out = run_json(code, [])
    assert out["status"] == "ROLLED_BACK"
    assert out["after_eff"] == 0  # the step did lower the set before the mismatch was seen
    assert out["now"] == out["start"] and out["same"]
