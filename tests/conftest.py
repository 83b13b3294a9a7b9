"""Fixtures shared by every test (the helpers they import live in helpers.py).

Invariant 1 (the caller's ids, groups and capabilities never change) is
checked around *every* test by the autouse ``identity_guard`` fixture, on top
of the tests that assert it explicitly for crashing and hanging children.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import CSRC
from procinfo import identity


@pytest.fixture(autouse=True)
def identity_guard() -> Iterator[None]:
    before = identity()
    yield
    assert identity() == before, "a test changed the test process's ids, groups or capabilities"


@pytest.fixture(scope="session")
def faults_so(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """csrc/faults.c built as a preloadable library."""
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler")
    out = tmp_path_factory.mktemp("faults") / "faults.so"
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-o", str(out), str(CSRC / "faults.c"), "-ldl"],
        check=True,
    )
    return out
