"""Packaging metadata: what pyproject.toml declares and what the installed
distribution carries.  Building wheels and sdists is too slow for a suite that
CI runs once per interpreter; ``scripts/release_check.sh`` does that."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from pathlib import Path
from typing import Any

import pytest

from uidprobe import names

ROOT = Path(__file__).resolve().parent.parent
PYTHONS = [f"3.{minor}" for minor in range(9, 14)]


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    # tomllib is 3.11+; pytest itself depends on tomli before that.
    toml = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    with open(ROOT / "pyproject.toml", "rb") as f:
        data: dict[str, Any] = toml.load(f)
    return data


def test_version_has_one_source_names_py(pyproject: dict[str, Any]) -> None:
    project = pyproject["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "uidprobe.names.VERSION"}


def test_names_version_is_a_literal_that_setuptools_reads_without_importing() -> None:
    # setuptools evaluates `attr:` statically only when the module assigns a literal.
    tree = ast.parse((ROOT / "src" / "uidprobe" / "names.py").read_text())
    values = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["VERSION"]
        and isinstance(node.value, ast.Constant)
    ]
    assert values == [names.VERSION]


def test_license_is_an_spdx_expression_with_its_file(pyproject: dict[str, Any]) -> None:
    project = pyproject["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 the uidprobe developers" in text
    # A license classifier next to an SPDX expression is an error for setuptools.
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]
    # license-files needs setuptools >= 77 at build time.
    assert "setuptools>=77" in pyproject["build-system"]["requires"]


def test_the_sdist_ships_the_license_and_the_release_check() -> None:
    lines = (ROOT / "MANIFEST.in").read_text().splitlines()
    assert "include LICENSE" in lines
    assert "recursive-include scripts *.sh *.py" in lines
    assert "recursive-include csrc *.c *.h" in lines


def test_the_manifest_excludes_nothing_so_the_sdist_build_warns_of_nothing() -> None:
    # setuptools warns "no previously-included files matching ... found" for
    # every exclude or prune that matches nothing, once per egg_info run.
    commands = {line.split()[0] for line in (ROOT / "MANIFEST.in").read_text().splitlines() if line.strip()}
    assert commands <= {"#", "include", "recursive-include"}, commands


def test_every_tracked_file_of_the_shipped_folders_is_in_the_manifest() -> None:
    import fnmatch
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files to compare with")
    folders = ("csrc", "tests", "benchmarks", "examples", "scripts", "contrib", "docs")
    tracked = subprocess.run(
        ["git", "ls-files", *folders], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    patterns: list[str] = []
    for line in (ROOT / "MANIFEST.in").read_text().splitlines():
        words = line.split()
        if words and words[0] == "include":
            patterns += words[1:]
        elif words and words[0] == "recursive-include":
            patterns += [f"{words[1]}/*{p}" if p.startswith("*") else f"{words[1]}/*/{p}" for p in words[2:]]
    missing = [f for f in tracked if not any(fnmatch.fnmatch(f, p) for p in patterns)]
    assert not missing, f"tracked but not shipped in the sdist: {missing}"


def test_installed_metadata_declares_license_and_pythons() -> None:
    meta = importlib.metadata.metadata("uidprobe")
    assert meta["Version"] == names.VERSION
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    shipped = [str(f) for f in importlib.metadata.distribution("uidprobe").files or []]
    assert [f for f in shipped if f.endswith(".dist-info/licenses/LICENSE")]
    assert meta["Requires-Python"] == ">=3.9"
    classifiers = meta.get_all("Classifier") or []
    for version in PYTHONS:
        assert f"Programming Language :: Python :: {version}" in classifiers
    for classifier in (
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: C",
        "Operating System :: POSIX :: Linux",
    ):
        assert classifier in classifiers
    # No project URLs until the project has a public home: a link that leads
    # nowhere is worse than none (#21).
    assert not meta.get_all("Project-URL")
