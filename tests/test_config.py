"""Import-time config: values, provenance, and no side effects."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import AS_NOBODY, requires_cc, requires_other_user, requires_root, requires_tools
from uidprobe import probes, store
from uidprobe.names import OBSERVED
from uidprobe.verdicts import Result

INSPECT = """
import json, os, sys
before = set(os.listdir(os.path.dirname(os.environ["UIDPROBE_STORE"])))
import uidprobe.config as c
after = set(os.listdir(os.path.dirname(os.environ["UIDPROBE_STORE"])))
print(json.dumps({
    "values": {n: getattr(c, n) for n in OBSERVED_NAMES},
    "source": c.SOURCE, "reason": c.REASON, "fingerprint": c.FINGERPRINT,
    "engine_loaded": "uidprobe._engine" in sys.modules,
    "suite_imported": "uidprobe.suite" in sys.modules,
    "files_changed": sorted(after ^ before),
}))
""".replace("OBSERVED_NAMES", repr(OBSERVED))


def import_config(store_path: Path, prefix: list[str] | None = None) -> dict[str, Any]:
    env = {**os.environ, store.ENV_VAR: str(store_path)}
    proc = subprocess.run(
        [*(prefix or []), sys.executable, "-c", INSPECT], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


@pytest.fixture
def store_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: that is 0700, and the unprivileged tests
    # run as nobody, who must be able to reach the store.
    d = Path(tempfile.mkdtemp(prefix="uidprobe-test-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def write_store(path: Path, verdict: dict[str, bool | None]) -> None:
    store.save(str(path), {n: Result(n, verdict.get(n, True), "from test") for n in OBSERVED})


def test_config_names_are_exactly_the_probes() -> None:
    assert tuple(p.name for p in probes.PROBES) == OBSERVED


def test_with_a_valid_store_import_loads_no_extension_forks_nothing_writes_nothing(store_dir: Path) -> None:
    path = store_dir / "verdicts"
    write_store(path, {"HASSETREUID": False})
    data = import_config(path)
    assert data["source"] == "store"
    assert data["values"] == {**dict.fromkeys(OBSERVED, 1), "HASSETREUID": 0}
    assert data["fingerprint"] == store.current_fingerprint()
    assert not data["engine_loaded"] and not data["suite_imported"]
    assert data["files_changed"] == []


def test_undetermined_verdict_in_the_store_is_exposed_as_0(store_dir: Path) -> None:
    path = store_dir / "verdicts"
    write_store(path, {"USESETEUID": None})
    assert import_config(path)["values"]["USESETEUID"] == 0


@requires_root
def test_without_a_store_a_privileged_process_probes_in_memory_and_writes_nothing(store_dir: Path) -> None:
    data = import_config(store_dir / "verdicts")
    assert data["source"] == "probe"
    assert data["values"] == dict.fromkeys(OBSERVED, 1)
    assert "store absent" in data["reason"]
    assert data["files_changed"] == []


@requires_root
@requires_tools
@requires_other_user
def test_without_a_store_an_unprivileged_process_gets_all_0_with_the_reason(store_dir: Path) -> None:
    data = import_config(store_dir / "verdicts", prefix=AS_NOBODY)
    assert data["source"] == "default"
    assert data["values"] == dict.fromkeys(OBSERVED, 0)
    assert "store absent" in data["reason"] and "not root (euid 65534)" in data["reason"]
    assert not data["engine_loaded"]


@requires_root
@requires_tools
@requires_other_user
def test_unprivileged_process_trusts_a_root_owned_store(store_dir: Path) -> None:
    path = store_dir / "verdicts"
    write_store(path, {})
    data = import_config(path, prefix=AS_NOBODY)
    assert data["source"] == "store" and data["values"] == dict.fromkeys(OBSERVED, 1)


@pytest.mark.parametrize("content", [b"", b"{", b"null", b'{"results": 5}'])
def test_import_never_raises_because_of_a_bad_store(store_dir: Path, content: bytes) -> None:
    path = store_dir / "verdicts"
    path.write_bytes(content)
    path.chmod(0o644)
    data = import_config(path)
    assert data["source"] in ("probe", "default")
    assert "store invalid" in data["reason"]


def test_get_config_var_is_shaped_like_sysconfig(store_dir: Path) -> None:
    path = store_dir / "verdicts"
    write_store(path, {"HASSETREUID": False})
    code = (
        "import json, uidprobe\n"
        "print(json.dumps([uidprobe.get_config_var('USESETEUID'), uidprobe.get_config_var('HASSETREUID'),"
        " uidprobe.get_config_var('NOPE'), uidprobe.get_config_vars(), uidprobe.define_macros()]))"
    )
    env = {**os.environ, store.ENV_VAR: str(path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    one, zero, unknown, all_vars, macros = json.loads(out.stdout)
    assert (one, zero, unknown) == (1, 0, None)
    assert all_vars == {**dict.fromkeys(OBSERVED, 1), "HASSETREUID": 0, "SOURCE": "store"}
    assert ["HASSETREUID", "1"] not in macros and ["USESETEUID", "1"] in macros


EXT_SETUP = """
import uidprobe
from setuptools import Extension, setup
setup(name="probeuser", version="0", ext_modules=[
    Extension("probeuser", ["probeuser.c"], define_macros=uidprobe.define_macros())])
"""

EXT_C = """
#include <Python.h>
static PyObject *mechanism(PyObject *self, PyObject *args) {
#if defined(HASSETRESUID)
    return PyUnicode_FromString("setresuid");
#elif defined(HASSETREUID)
    return PyUnicode_FromString("setreuid");
#elif defined(USESETEUID)
    return PyUnicode_FromString("seteuid");
#else
    return PyUnicode_FromString("none");
#endif
}
static PyMethodDef methods[] = {{"mechanism", mechanism, METH_NOARGS, ""}, {0}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "probeuser", "", -1, methods};
PyMODINIT_FUNC PyInit_probeuser(void) { return PyModule_Create(&mod); }
"""


@requires_cc
@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ({}, "setresuid"),
        ({"HASSETRESUID": False}, "setreuid"),
        ({"HASSETRESUID": False, "HASSETREUID": None}, "seteuid"),
    ],
)
def test_define_macros_compile_another_packages_extension_against_the_values(
    tmp_path: Path, store_dir: Path, verdicts: dict[str, bool | None], expected: str
) -> None:
    pytest.importorskip("setuptools")
    path = store_dir / "verdicts"
    write_store(path, verdicts)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "setup.py").write_text(EXT_SETUP)
    (proj / "probeuser.c").write_text(EXT_C)
    env = {**os.environ, store.ENV_VAR: str(path)}
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=proj,
        env=env,
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        [sys.executable, "-c", "import probeuser; print(probeuser.mechanism())"],
        cwd=proj,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == expected
