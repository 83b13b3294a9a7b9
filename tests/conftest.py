"""Fixtures shared by every test (the helpers they import live in helpers.py).

Invariant 1 (the caller's ids, groups and capabilities never change) is
checked around *every* test by the autouse ``identity_guard`` fixture, on top
of the tests that assert it explicitly for crashing and hanging children.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
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


@pytest.fixture(scope="module")
def store_of_1000() -> Iterator[Path]:
    """A store that a process of uid 1000 forged (HASSETRESUID flipped to 0),
    owned by 1000 in a directory 1000 owns, under root's /tmp/X (0755): what
    the trust rule must refuse to every reader holding more than uid 1000."""
    from uidprobe import store
    from uidprobe.names import OBSERVED
    from uidprobe.verdicts import Result

    base = Path(tempfile.mkdtemp(prefix="uidprobe-forged-", dir="/tmp"))
    try:
        base.chmod(0o755)
        home = base / "u1000"
        home.mkdir(mode=0o755)
        results = {n: Result(n, n != "HASSETRESUID", "forged by uid 1000") for n in OBSERVED}
        path = home / "verdicts"
        path.write_bytes(store.serialise(results))
        path.chmod(0o644)
        for p in (home, path):
            os.chown(p, 1000, 1000)
        yield path
    finally:
        shutil.rmtree(base)
