"""Every README example marked ``console`` runs as written (#14 item 5).

Convention (stated in the README): in a fenced block tagged ``console``,
each line starting with ``$ `` or ``# `` is a command (a trailing ``\\``
continues it), expected to exit 0 unless it ends in ``# exit N``; other
lines are sample output, not compared.  A ``sh`` block whose first line is
``#!/bin/sh`` is a script (the Ansible fact) and must exit 0 too.  They run
in order, as root, in a scratch directory holding a link to csrc/, with the
installed ``uidprobe`` first on PATH and ``$UIDPROBE_STORE`` in scratch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, requires_cc, requires_other_user, requires_root, requires_tools

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(tag: str) -> list[str]:
    return [body for t, body in FENCE.findall((ROOT / "README.md").read_text()) if t == tag]


def commands(body: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    lines = iter(body.splitlines())
    for line in lines:
        if not line.startswith(("$ ", "# ")):
            continue
        cmd = line[2:]
        while cmd.endswith("\\"):
            cmd = cmd[:-1] + " " + next(lines).strip()
        m = re.search(r"\s+#\s*exit (\d+)$", cmd)
        out.append((cmd[: m.start()] if m else cmd, int(m.group(1)) if m else 0))
    return out


def test_the_readme_has_runnable_examples() -> None:
    runnable = [c for b in blocks("console") for c, _ in commands(b)]
    assert len(runnable) >= 10
    assert "uidprobe configure" in runnable and "uidprobe show" in runnable
    assert "cc -shared -fPIC -o faults.so csrc/faults.c -ldl" in runnable  # before faults.so is preloaded
    assert any("LD_PRELOAD=./faults.so" in c for c in runnable)
    assert blocks("sh") and any(b.startswith("#!/bin/sh\n") for b in blocks("sh"))


@requires_root
@requires_cc
@requires_tools
@requires_other_user
def test_every_console_example_runs_as_written(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    tmp_path.chmod(0o755)
    work.chmod(0o755)
    (work / "csrc").symlink_to(ROOT / "csrc")
    bindir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "UIDPROBE_STORE": str(tmp_path / "store" / "verdicts"),
    }
    ran = []
    for body in blocks("console"):
        for cmd, want in commands(body):
            p = subprocess.run(
                ["sh", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False
            )
            assert p.returncode == want, f"{cmd!r} exited {p.returncode}, not {want}:\n{p.stdout}\n{p.stderr}"
            assert "Traceback" not in p.stderr, cmd
            ran.append(cmd)
    assert ran
    for body in blocks("sh"):
        if body.startswith("#!/bin/sh\n"):
            script = work / "uidprobe.fact"
            script.write_text(body)
            script.chmod(0o755)
            p = subprocess.run([str(script)], cwd=work, env=env, capture_output=True, text=True, check=False)
            assert p.returncode == 0, p.stderr
            assert json.loads(p.stdout)["schema"] == "uidprobe-export"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("$ a\nout\n# b \\\n  c\n", [("a", 0), ("b  c", 0)]),
        ("# uidprobe model --diff x y   # exit 1\n", [("uidprobe model --diff x y", 1)]),
    ],
)
def test_the_convention_is_parsed_as_documented(body: str, expected: list[tuple[str, int]]) -> None:
    assert commands(body) == expected
