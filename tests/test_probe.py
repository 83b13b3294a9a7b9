"""Real probes on this machine, and proof that they are real: every fault
profile flips exactly the verdicts it should, and nothing else."""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import uidprobe
from helpers import (
    AS_NOBODY,
    ROOT,
    in_user_namespace,
    probe_in_subprocess,
    requires_cc,
    requires_other_user,
    requires_root,
    requires_tools,
    requires_userns,
    run_python,
)
from procinfo import identity
from uidprobe import names, probes, suite

OBSERVED = list(names.OBSERVED)  # maintained apart from the probe table: the store's order


@requires_root
def test_every_verdict_is_true_on_this_linux_machine() -> None:
    results = uidprobe.probe()
    assert {n: r.verdict for n, r in results.items()} == dict.fromkeys(suite.NAMES, True)


@requires_root
def test_probing_leaves_the_callers_ids_groups_and_capabilities_unchanged() -> None:
    before = identity()
    uidprobe.probe()
    assert identity() == before


def test_probe_by_name_returns_that_one_result() -> None:
    r = uidprobe.probe("USESETEUID")
    assert (r.name, r.meaning) == ("USESETEUID", probes.by_name("USESETEUID").meaning)
    assert r.verdict == uidprobe.probe()["USESETEUID"].verdict


def test_probe_with_unknown_name_raises_value_error() -> None:
    with pytest.raises(ValueError, match="unknown probe 'USESETUID'"):
        uidprobe.probe("USESETUID")


def test_results_come_in_the_documented_order() -> None:
    # names.OBSERVED is the order the store, config.h and the README use.
    assert list(uidprobe.probe()) == [*OBSERVED, "POSIX_SAVED_IDS"]


@requires_root
def test_configured_ids_are_the_ones_the_child_switches_to() -> None:
    r = uidprobe.probe("USESETEUID", uids=(5001, 5002, 5003))
    assert str(r.trace[0].step) == "setresuid(5001, 0, 0)"
    assert r.trace[1].record is not None and r.trace[1].record.uids == (5001, 5002, 0)


def test_declared_posix_saved_ids_is_labelled_as_declared() -> None:
    r = uidprobe.probe("POSIX_SAVED_IDS")
    assert r.kind == "declared" and "sysconf" in r.reason


# ------------------------------------------------------- without privilege


@requires_root
@requires_tools
@pytest.mark.parametrize(
    ("prefix", "phrase"),
    [
        pytest.param(AS_NOBODY, "not root (euid 65534) and lacks CAP_SETUID", marks=requires_other_user),
        (
            ["setpriv", "--inh-caps=-setuid,-setgid", "--bounding-set=-setuid,-setgid"],
            "runs as root but without CAP_SETUID",
        ),
    ],
    ids=["nobody", "root-without-setuid-caps"],
)
def test_without_privilege_every_probe_is_undetermined_with_the_reason(prefix: list[str], phrase: str) -> None:
    results = probe_in_subprocess(prefix=prefix)
    for name in OBSERVED:
        verdict, reason = results[name]
        assert verdict is None, name
        assert phrase in reason


@requires_root
@requires_tools
@requires_userns
def test_user_namespace_mapping_only_root_is_undetermined_naming_the_map() -> None:
    proc = in_user_namespace(
        "import json, uidprobe; print(json.dumps({n: [r.verdict, r.reason] for n, r in uidprobe.probe().items()}))",
        "0 0 1\n",
        "0 0 1\n",
    )
    results = json.loads(proc.stdout)
    for name in OBSERVED:
        verdict, reason = results[name]
        assert verdict is None, name
        assert "/proc/self/uid_map (0 0 1)" in reason


@requires_root
@requires_tools
@requires_userns
def test_user_namespace_with_a_partial_map_probes_with_mapped_ids() -> None:
    proc = in_user_namespace(
        "import json, uidprobe; r = uidprobe.probe(); "
        "print(json.dumps({n: x.verdict for n, x in r.items()})); "
        "print(r['USESETEUID'].trace[0].step)",
        "0 0 1\n1000 1000 3\n",
        "0 0 1\n1000 1000 3\n",
    )
    verdicts_line, first_step = proc.stdout.splitlines()
    assert first_step == "setresuid(1000, 0, 0)"
    verdicts = json.loads(verdicts_line)
    assert all(verdicts[n] is True for n in OBSERVED)


@requires_root
@requires_tools
@requires_userns
def test_user_namespace_with_too_few_gids_leaves_only_gid_probes_undetermined() -> None:
    proc = in_user_namespace(
        "import json, uidprobe; print(json.dumps({n: [r.verdict, r.reason] for n, r in uidprobe.probe().items()}))",
        "0 0 1\n1000 1000 3\n",
        "0 0 1\n",
    )
    results = json.loads(proc.stdout)
    assert results["USESETEUID"][0] is True
    verdict, reason = results["USESETEGID"]
    assert verdict is None and "/proc/self/gid_map (0 0 1)" in reason


@requires_root
@requires_tools
@requires_userns
def test_user_namespace_denying_setgroups_leaves_that_probe_undetermined() -> None:
    # An unprivileged writer must deny setgroups before writing gid_map; here
    # the probe sees "deny" and must say so instead of reporting "broken".
    code = "import json, uidprobe; r = uidprobe.probe('SETGROUPS_CAN_CLEAR'); print(json.dumps([r.verdict, r.reason]))"
    proc = in_user_namespace(code, "0 0 1\n1000 1000 3\n", "0 0 1\n1000 1000 3\n", setgroups="deny")
    verdict, reason = json.loads(proc.stdout)
    assert verdict is None and "setgroups is denied" in reason


# ------------------------------------------------- fault injection matrix

EXPECTED_FLIPS: dict[str, dict[str, Any]] = {
    "seteuid-moves-saved": {"USESETEUID": False},
    "setegid-moves-saved": {"USESETEGID": False},
    "setreuid-ignores-real": {"HASSETREUID": False},
    "setuid-keeps-saved": {"SETUID_PERMANENT": False},
    "no-setresuid": {"HASSETRESUID": False, "HASSETRESGID": False},
    "setgroups-ignored": {"SETGROUPS_CAN_CLEAR": False},
    "seteuid-moves-saved,no-setresuid": {"USESETEUID": False, "HASSETRESUID": False, "HASSETRESGID": False},
    # A setup call that lies: the probes set up with setreuid instead, and
    # only the liar's own verdict is no.
    "setresuid-ignored": {"HASSETRESUID": False},
    "setresuid-ignored,seteuid-moves-saved": {"HASSETRESUID": False, "USESETEUID": False},
    # A uid change that leaves the filesystem uid at root has not switched
    # file access: the uid mechanisms say no, and the gid probes, which drop
    # the uid around their checks, cannot test.
    "fsuid-stays-root": {
        "USESETEUID": False,
        "HASSETREUID": False,
        "HASSETRESUID": False,
        "USESETEGID": None,
        "HASSETREGID": None,
        "SETGID_PERMANENT": None,
        "HASSETRESGID": None,
    },
}


@requires_root
@pytest.mark.parametrize("profile", sorted(EXPECTED_FLIPS))
def test_fault_profile_flips_exactly_the_verdict_it_breaks(faults_so: Path, profile: str) -> None:
    results = probe_in_subprocess(env={"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": profile})
    expected = {**dict.fromkeys(suite.NAMES, True), **EXPECTED_FLIPS[profile]}
    assert {n: v for n, (v, _) in results.items()} == expected


@requires_root
def test_without_fault_profile_the_preload_changes_nothing(faults_so: Path) -> None:
    results = probe_in_subprocess(env={"LD_PRELOAD": str(faults_so)})
    assert all(v is True for v, _ in results.values())


@requires_root
def test_sandbox_refusing_every_call_makes_every_probe_undetermined(faults_so: Path) -> None:
    results = probe_in_subprocess(env={"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": "eperm"})
    for name in OBSERVED:
        verdict, reason = results[name]
        assert verdict is None and reason.startswith("could not establish the start state"), name


@requires_root
@pytest.mark.parametrize(("profile", "phrase"), [("crash", "killed by SIGSEGV"), ("hang", "timed out")])
def test_crashing_or_hanging_children_make_every_probe_undetermined(faults_so: Path, profile: str, phrase: str) -> None:
    code = (
        "import json, uidprobe\nfrom procinfo import identity\n"
        "before = identity()\n"
        "res = uidprobe.probe(timeout=0.2)\n"
        "print(json.dumps({'same': identity() == before, "
        "'res': {n: [r.verdict, r.reason] for n, r in res.items()}}))\n"
    )
    env = {"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": profile, "PYTHONPATH": str(ROOT / "tests")}
    proc = run_python(code, env=env)
    data = json.loads(proc.stdout)
    assert data["same"], "the caller's identity changed"
    for name in OBSERVED:
        verdict, reason = data["res"][name]
        assert verdict is None and phrase in reason, name


# ------------------------------------ a C library without getresuid/setresuid


@pytest.fixture(scope="session")
def engine_without_res(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The engine rebuilt as if the C library had no get/setres[ug]id."""
    spec = importlib.util.spec_from_file_location("build_engine", ROOT / "src" / "build_engine.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    hidden = frozenset({"getresuid", "setresuid", "getresgid", "setresgid"})
    builder = build.make_builder("_engine_nores", root=str(ROOT), hidden=hidden)
    tmp = tmp_path_factory.mktemp("nores")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setuptools' own deprecation chatter
        path = builder.compile(tmpdir=str(tmp))
    mspec = importlib.util.spec_from_file_location("_engine_nores", path)
    assert mspec and mspec.loader
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    return module


@requires_cc
def test_engine_builds_and_reports_no_res_calls_when_they_are_hidden(engine_without_res: ModuleType) -> None:
    from uidprobe.engine import Engine

    f = Engine(engine_without_res).built
    assert not (f.getresuid or f.setresuid or f.getresgid or f.setresgid)


@requires_cc
@requires_root
def test_without_getresuid_saved_ids_are_inferred_and_verdicts_hold(engine_without_res: ModuleType) -> None:
    from uidprobe.engine import Engine

    results = suite.run(engine=Engine(engine_without_res))
    assert results["HASSETRESUID"].verdict is False
    assert "setresuid() is not provided by this C library" in results["HASSETRESUID"].reason
    assert results["HASSETRESGID"].verdict is False
    for name in ("USESETEUID", "HASSETREUID", "SETUID_PERMANENT", "USESETEGID", "SETGID_PERMANENT"):
        assert results[name].verdict is True, (name, results[name].reason)
    assert "inferred" in results["USESETEUID"].reason
    assert results["USESETEUID"].trace[1].record.uids[2] is None  # type: ignore[union-attr]


@requires_cc
@requires_root
def test_without_getresuid_a_seteuid_that_moves_saved_is_still_caught(
    engine_without_res: ModuleType, faults_so: Path
) -> None:
    code = (
        "import importlib.util, json, sys\n"
        "from uidprobe import suite\n"
        "from uidprobe.engine import Engine\n"
        f"spec = importlib.util.spec_from_file_location('_engine_nores', {engine_without_res.__file__!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "r = suite.run(['USESETEUID'], engine=Engine(m))['USESETEUID']\n"
        "print(json.dumps([r.verdict, r.reason]))\n"
    )
    proc = run_python(code, env={"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": "seteuid-moves-saved"})
    verdict, reason = json.loads(proc.stdout)
    assert verdict is False
    assert reason == "seteuid(0) failed: EPERM"


def test_probing_as_a_subprocess_uses_the_same_interpreter() -> None:
    # Guards the helpers above: a different interpreter would test another install.
    proc = run_python("import sys; print(sys.executable)")
    assert proc.stdout.strip() == sys.executable
