"""Privilege is more than uids: what a switched thread holds in its capability sets.

A switch to a user other than root leaves no effective (and no ambient)
capability, whatever the securebits; restore brings back exactly the
starting sets.  Every case runs a real root process in a subprocess (under
``setpriv`` where the securebits or ambient set matter) and reads the sets
both from /proc and from capget(2) through the C library, independently of
uidprobe's own read-back.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import requires_root, run_python
from procinfo import capget_sets, status_caps
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
}

SWITCH = """
import json, os
from procinfo import capget_sets, securebits, status_caps
from uidprobe.privileges import Switcher

def sets():
    return {{"status": status_caps(), "capget": capget_sets()}}

# What the kernel alone does here: a bare change of the effective uid.
os.setresuid(-1, 1000, -1)
kernel_kept = status_caps()["CapEff"]
os.setresuid(-1, 0, -1)

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
    code = SWITCH.format(values=VALUES, scope=scope, path=roots_secret)
    out = run_json(code, ENVIRONMENTS[environment])
    before, inside, after = out["before"], out["inside"], out["after"]
    # The environment is what it claims (else the case proves nothing).
    if environment == "no_setuid_fixup":
        assert out["securebits"] & SECBIT_NO_SETUID_FIXUP and out["kernel_kept"] == before["status"]["CapEff"] != 0
    if environment == "ambient":
        assert before["status"]["CapAmb"] == CAP_SETUID_SETGID
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
