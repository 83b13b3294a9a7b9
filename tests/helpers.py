"""Helpers the tests share: skip markers and ways to run code as a user would.

A plain module, imported by name (``from helpers import run_cli``): conftest.py
holds only fixtures, which pytest injects.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
NOBODY = 65534


def _have_setid_caps() -> bool:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                eff = int(line.split()[1], 16)
                return bool(eff >> 6 & 1 and eff >> 7 & 1)
    return False


PRIVILEGED = os.geteuid() == 0 and _have_setid_caps()
requires_root = pytest.mark.skipif(not PRIVILEGED, reason="needs root with CAP_SETUID and CAP_SETGID")
requires_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
requires_tools = pytest.mark.skipif(
    shutil.which("setpriv") is None or shutil.which("unshare") is None,
    reason="needs util-linux setpriv and unshare",
)


def _user_namespaces_work() -> bool:
    """Can this process start one?  Not under qemu-user (unshare gives
    EINVAL), in a chroot (EPERM), or where the administrator disabled them."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-U", "true"], capture_output=True, check=False).returncode == 0


#: Tests that start a user namespace (``unshare -U``).
requires_userns = pytest.mark.skipif(
    not _user_namespaces_work(),
    reason="needs user namespaces: 'unshare -U' fails here (qemu-user refuses them with EINVAL, a chroot with "
    "EPERM; or they are disabled)",
)


def _subreaper_works() -> bool:
    """Can a process become a child subreaper?  Not under qemu-user (EINVAL)."""
    code = "import ctypes, sys; sys.exit(ctypes.CDLL(None).prctl(36, 1, 0, 0, 0))  # PR_SET_CHILD_SUBREAPER"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, check=False).returncode == 0


#: Tests that make a process a child subreaper.
requires_subreaper = pytest.mark.skipif(
    not _subreaper_works(), reason="PR_SET_CHILD_SUBREAPER is refused here (qemu-user gives EINVAL)"
)


def _engine_builds_thread_ops() -> bool:
    from uidprobe.engine import default_engine

    return default_engine().built.thread_ops


#: Tests of per-thread identity (THREAD_CREDENTIALS, scope="thread"): the
#: engine's build facts say whether the per-thread calls exist (Linux).
requires_thread_ops = pytest.mark.skipif(
    not _engine_builds_thread_ops(),
    reason="this build of the engine has no per-thread calls (THREAD_CREDENTIALS cannot be 1 here)",
)


def _interpreter_runs_as_another_user() -> bool:
    """Can this interpreter start at all as nobody?  Not when it lives under
    a private directory (pyenv under /root with a shared libpython)."""
    if not (PRIVILEGED and shutil.which("setpriv")):
        return False
    proc = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            "-c",
            "import uidprobe",
        ],
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


#: Tests that run this interpreter as another user (nobody, uid 1000).
requires_other_user = pytest.mark.skipif(
    not _interpreter_runs_as_another_user(),
    reason="needs root, setpriv, and an interpreter that other users can run (this one is installed "
    "somewhere they cannot read)",
)


def run_python(
    code: str,
    *,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (optionally under ``prefix``)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*(prefix or []), sys.executable, "-c", code],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_cli(
    *args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m uidprobe ARGS`` as a user runs it (optionally under ``prefix``)."""
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "uidprobe", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


PROBE_JSON = (
    "import json, uidprobe\n"
    "res = uidprobe.probe(timeout={timeout!r})\n"
    "print(json.dumps({{n: [r.verdict, r.reason] for n, r in res.items()}}))\n"
)


def probe_in_subprocess(
    *, env: dict[str, str] | None = None, prefix: list[str] | None = None, timeout: float = 2.0
) -> dict[str, list[Any]]:
    """{name: [verdict, reason]} from probing in a fresh interpreter."""
    proc = run_python(PROBE_JSON.format(timeout=timeout), env=env, prefix=prefix)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, list[Any]] = json.loads(proc.stdout)
    return result


AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def in_user_namespace(
    code: str, uid_map: str, gid_map: str, setgroups: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run python ``code`` as root of a new user namespace with these maps.

    unshare(1) creates the namespace; this (root) process writes the maps,
    which may have several ranges (unshare's own options need newuidmap).
    """
    proc = subprocess.Popen(
        ["unshare", "-U", "--", "sh", "-c", f'read go; exec "{sys.executable}" -c "$0"', code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ours = os.readlink("/proc/self/ns/user")
    deadline = time.monotonic() + 10
    while os.readlink(f"/proc/{proc.pid}/ns/user") == ours:
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("unshare did not enter a new user namespace")
        time.sleep(0.005)
    if setgroups is not None:
        Path(f"/proc/{proc.pid}/setgroups").write_text(setgroups)
    Path(f"/proc/{proc.pid}/uid_map").write_text(uid_map)
    Path(f"/proc/{proc.pid}/gid_map").write_text(gid_map)
    out, err = proc.communicate("go\n", timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@contextlib.contextmanager
def archives_owned_by(
    owners: dict[str, int], prefix: str, content: Callable[[str], bytes] = lambda name: b""
) -> Iterator[list[Path]]:
    """Mailing-list archives as the sendmail story has them: ``u/NAME/archive``,
    mode 4600 and owned by NAME's uid, in a home (0755) NAME owns, under a
    fresh 0755 directory in /tmp (pytest's own directories are 0700 root)."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    base.chmod(0o755)
    try:
        (base / "u").mkdir(mode=0o755)
        (base / "u").chmod(0o755)
        paths = []
        for name, uid in owners.items():
            home = base / "u" / name
            home.mkdir()
            os.chown(home, uid, uid)
            home.chmod(0o755)
            archive = home / "archive"
            archive.write_bytes(content(name))
            os.chown(archive, uid, uid)
            archive.chmod(0o4600)
            paths.append(archive)
        yield paths
    finally:
        shutil.rmtree(base)


requires_useradd = pytest.mark.skipif(
    not PRIVILEGED or shutil.which("useradd") is None or shutil.which("groupadd") is None,
    reason="needs root and shadow's useradd/groupadd to make a real account",
)


@dataclass(frozen=True)
class Account:
    """A real account in the password and group databases."""

    name: str
    uid: int
    gid: int  # its primary group (its own, made by useradd)
    group_names: tuple[str, ...]  # its supplementary groups, made by groupadd
    groups: tuple[int, ...]


def _quiet(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def temporary_account(extra_groups: int = 2) -> Iterator[Account]:
    """A user made with useradd, with its own primary group and
    ``extra_groups`` supplementary groups made with groupadd, all under
    fresh names; all removed afterwards, whatever happened (other helpers'
    tests may add accounts at the same time: the names never collide)."""
    stem = f"uidpt{secrets.token_hex(4)}"
    group_names = tuple(f"{stem}g{i}" for i in range(extra_groups))
    made: list[str] = []
    user_made = False
    try:
        for g in group_names:
            _quiet("groupadd", g)
            made.append(g)
        _quiet(
            "useradd",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            *(["--groups", ",".join(group_names)] if group_names else []),
            stem,
        )
        user_made = True
        pw = pwd.getpwnam(stem)
        yield Account(
            name=stem,
            uid=pw.pw_uid,
            gid=pw.pw_gid,
            group_names=group_names,
            groups=tuple(grp.getgrnam(g).gr_gid for g in group_names),
        )
    finally:
        if user_made:
            subprocess.run(["userdel", stem], capture_output=True, check=False, timeout=60)
        with contextlib.suppress(KeyError):
            grp.getgrnam(stem)  # the user's own group, if userdel left it
            subprocess.run(["groupdel", stem], capture_output=True, check=False, timeout=60)
        for g in made:
            subprocess.run(["groupdel", g], capture_output=True, check=False, timeout=60)
