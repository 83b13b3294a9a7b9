"""The downstream example builds exactly as docs/build.md shows it.

examples/downstream is a complete package whose build requires uidprobe; it
is built with build isolation against a uidprobe wheel built here from the
tree (never one from an index), by scripts/downstream_check.sh, which runs
the documented commands as written and checks the compiled macros against
``define_macros()``.  The release check runs the same script on the
release's own wheel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, requires_cc


@pytest.mark.slow
@requires_cc
def test_the_downstream_example_builds_as_documented(tmp_path: Path) -> None:
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    pip = [sys.executable, "-m", "pip", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "--wheel-dir", str(dist), str(ROOT)], check=True, timeout=600)
    (wheel,) = dist.glob("uidprobe-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([venv / "bin" / "pip", "install", "--quiet", str(wheel)], check=True, timeout=600)
    p = subprocess.run(
        [ROOT / "scripts" / "downstream_check.sh", str(wheel), str(venv)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ran = [line[2:] for line in p.stdout.splitlines() if line.startswith("+ ")]
    assert ran[0] == "python3 -m pip wheel --no-deps --wheel-dir dist examples/downstream"
    assert p.stdout.splitlines()[-1].startswith("downstream_check: OK: ")


def test_the_example_is_a_complete_package() -> None:
    project = (ROOT / "examples" / "downstream" / "pyproject.toml").read_text()
    assert 'name = "switchmode"' in project and 'version = "1.0"' in project
    assert '"uidprobe"' in project  # a build requirement: it runs in the isolated build environment
    assert "PyInit_switchmode" in (ROOT / "examples" / "downstream" / "switchmode.c").read_text()
