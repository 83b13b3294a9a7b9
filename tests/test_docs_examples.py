"""Every example marked ``console`` in the README and in docs/ runs as written.

Convention (stated in docs/development.md): in a fenced block tagged
``console``, each line starting with ``$ `` or ``# `` is a command (a
trailing ``\\`` continues it), expected to exit 0 unless it ends in
``# exit N``; other lines are sample output, not compared.  A ``sh`` block
whose first line is ``#!/bin/sh`` is a script (the Ansible fact) and must
exit 0 too.  Each page's commands run in order, as root, in a scratch
directory of their own that holds a link to csrc/, with the installed
``uidprobe`` first on PATH and ``$UIDPROBE_STORE`` in scratch, so a page
never depends on another page having run first."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, requires_cc, requires_other_user, requires_root, requires_tools

FENCE = re.compile(r"^```(\S*)\n(.*?)^```", re.M | re.S)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(page: Path, tag: str) -> list[str]:
    return [body for t, body in FENCE.findall(page.read_text()) if t == tag]


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


def test_the_docs_have_runnable_examples() -> None:
    runnable = [c for page in PAGES for b in blocks(page, "console") for c, _ in commands(b)]
    assert len(runnable) >= 20
    assert "uidprobe configure" in runnable and "uidprobe show" in runnable
    assert "cc -shared -fPIC -o faults.so csrc/faults.c -ldl" in runnable
    assert any("LD_PRELOAD=./faults.so" in c for c in runnable)
    assert any(b.startswith("#!/bin/sh\n") for page in PAGES for b in blocks(page, "sh"))


def test_every_page_that_preloads_faults_builds_them_first() -> None:
    for page in PAGES:
        cmds = [c for b in blocks(page, "console") for c, _ in commands(b)]
        uses = [i for i, c in enumerate(cmds) if "LD_PRELOAD=./faults.so" in c]
        if uses:
            assert "cc -shared -fPIC -o faults.so csrc/faults.c -ldl" in cmds[: uses[0]], page.name


def test_the_readme_is_short_and_points_to_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert 100 <= len(readme.splitlines()) <= 250
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "index.md":
            assert f"(docs/{page.name})" in readme, f"the README does not point to {page.name}"


@requires_root
@requires_cc
@requires_tools
@requires_other_user
@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "console") or blocks(p, "sh")], ids=lambda p: p.name)
def test_every_console_example_runs_as_written(tmp_path: Path, page: Path) -> None:
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
    for body in blocks(page, "console"):
        for cmd, want in commands(body):
            p = subprocess.run(
                ["sh", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False
            )
            assert p.returncode == want, f"{cmd!r} exited {p.returncode}, not {want}:\n{p.stdout}\n{p.stderr}"
            assert "Traceback" not in p.stderr, cmd
    for body in blocks(page, "sh"):
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
