"""The transition model: measured, exported, diffable, and agreeing with the probes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from helpers import AS_NOBODY, requires_other_user, requires_root, requires_tools, run_python
from helpers import run_cli as uidprobe
from uidprobe import cli, model, suite
from uidprobe.model import Model

pytestmark = requires_root
UID_PROBES = ["USESETEUID", "HASSETREUID", "SETUID_PERMANENT", "HASSETRESUID"]


@pytest.fixture(scope="module")
def uid_model() -> Model:
    return model.build("uid")


def transition(m: Model, start: str, call: str, *args: str) -> model.Transition:
    return m.lookup()[(tuple(start.split(",")), call, args)]  # type: ignore[index]


def test_uid_model_covers_27_states_and_88_calls_each(uid_model: Model) -> None:
    assert len(uid_model.states) == 27
    assert len(uid_model.transitions) == 27 * 88
    assert all(why is None for why in uid_model.states.values())


def test_known_linux_transitions_are_measured(uid_model: Model) -> None:
    t = transition(uid_model, "0,0,0", "setuid", "A")
    assert (t.ret, t.end) == (0, ("A", "A", "A"))
    t = transition(uid_model, "A,A,A", "seteuid", "0")
    assert (t.ret, t.errno, t.end) == (-1, "EPERM", ("A", "A", "A"))
    t = transition(uid_model, "A,B,0", "seteuid", "0")  # back through the saved uid
    assert (t.ret, t.end) == (0, ("A", "0", "0"))


def test_json_has_the_documented_versioned_schema_and_round_trips(uid_model: Model) -> None:
    doc = json.loads(json.dumps(uid_model.to_json()))
    assert (doc["schema"], doc["version"], doc["family"]) == ("uidprobe-model", 1, "uid")
    assert set(doc["transitions"][0]) == {"from", "call", "args", "ret", "errno", "to", "note"}
    assert model.from_json(doc) == uid_model


def test_diff_names_exactly_the_transitions_that_differ(uid_model: Model) -> None:
    changed = dataclasses.replace(uid_model.transitions[5], ret=-1, errno="EPERM")
    ts = uid_model.transitions
    other = dataclasses.replace(uid_model, transitions=(*ts[:5], changed, *ts[6:]))
    lines = model.diff(uid_model, other)
    assert len(lines) == 1 and lines[0].startswith(f"from ({','.join(changed.start)}) {changed.describe()}: ")
    assert lines[0].endswith(f"|  {changed.result()}") and model.diff(uid_model, uid_model) == []


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"schema": "uidprobe-model", "version": 99},
        {"schema": "uidprobe-model", "version": 1, "ids": {"A": "x"}},
        [1, 2],
    ],
)
def test_a_document_that_is_not_a_model_is_refused(doc: Any) -> None:
    with pytest.raises(model.ModelError):
        model.from_json(doc)


def test_summary_says_where_root_comes_back_and_nothing_fails_silently(uid_model: Model) -> None:
    text = model.summary(uid_model)
    assert "states not established: 0" in text
    assert "0 can be regained: 10 (" in text and "(A,B,0)" in text
    assert "calls that fail silently (success returned, ids unchanged): 0" in text


def test_dot_has_a_node_per_state_and_labelled_edges(uid_model: Model) -> None:
    dot = model.to_dot(uid_model)
    assert dot.startswith("digraph uidprobe_uid_model {") and dot.rstrip().endswith("}")
    assert dot.count('[label="(') == 27
    assert '"0,0,0" -> "A,A,A" [label="setuid(A)' in dot


def test_gid_model_is_made_without_privilege(uid_model: Model) -> None:
    g = model.build("gid")
    t = g.lookup()[(("A", "A", "A"), "setegid", ("0",))]
    assert (t.ret, t.errno) == (-1, "EPERM")  # with CAP_SETGID it would have succeeded
    assert all(why is None for why in g.states.values())


def test_verdicts_derived_from_the_model_agree_with_the_probes(uid_model: Model) -> None:
    derived = model.derive_verdicts(uid_model)
    probed = suite.run(UID_PROBES)
    assert {n: r.verdict for n, r in derived.items()} == {n: probed[n].verdict for n in UID_PROBES}


AGREE = """
import json
from uidprobe import model, suite
m = model.build("uid")
d = model.derive_verdicts(m)
p = suite.run(%r)
print(json.dumps({"derived": {n: r.verdict for n, r in d.items()}, "probed": {n: r.verdict for n, r in p.items()}}))
"""


def routes(faults_so: Path, profile: str) -> dict[str, Any]:
    proc = run_python(AGREE % (UID_PROBES,), env={"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": profile})
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


@pytest.mark.parametrize(
    "profile", ["seteuid-moves-saved", "setreuid-ignores-real", "setuid-keeps-saved", "no-setresuid"]
)
def test_both_routes_agree_under_fault_profiles(faults_so: Path, profile: str) -> None:
    data = routes(faults_so, profile)
    assert data["derived"] == data["probed"]
    assert False in data["probed"].values()  # the profile really broke something


def test_where_the_model_cannot_establish_a_state_it_never_contradicts_the_probes(faults_so: Path) -> None:
    # Without setresuid and with a broken seteuid, states like (0,0,B) cannot
    # be set up in a child, so the model cannot replay a path through them.
    code = AGREE % (UID_PROBES,) + "print(d['HASSETREUID'].reason)\n"
    proc = run_python(code, env={"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": "seteuid-moves-saved,no-setresuid"})
    first, reason = proc.stdout.splitlines()
    data = json.loads(first)
    for name in UID_PROBES:
        assert data["derived"][name] in (data["probed"][name], None), name
    assert data["derived"]["USESETEUID"] is False and data["probed"]["USESETEUID"] is False
    assert reason.startswith("the model cannot replay setreuid(2, 0) from (0,0,B): state not established")


def test_lying_success_shows_up_as_silent_failures(faults_so: Path) -> None:
    code = "from uidprobe import model; print(model.summary(model.build('uid')))"
    out = run_python(code, env={"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": "lying-success"}).stdout
    line = next(x for x in out.splitlines() if x.startswith("calls that fail silently"))
    assert int(line.rsplit(" ", 1)[1]) > 0


# ----------------------------------------------------------------- CLI


def test_cli_diff_lists_exactly_the_transitions_a_broken_seteuid_changes(tmp_path: Path, faults_so: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert uidprobe("model", "--format", "json", "-o", str(a)).returncode == 0
    env = {"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": "seteuid-moves-saved"}
    assert uidprobe("model", "--format", "json", "-o", str(b), env=env).returncode == 0
    p = uidprobe("model", "--diff", str(a), str(b))
    assert p.returncode == cli.EX_FALSE
    lines = p.stdout.splitlines()
    assert lines[-1].endswith("transition(s) differ") and len(lines) > 1
    assert all(" seteuid(" in line for line in lines[:-1])


def test_cli_diff_of_identical_models_exits_0(tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    uidprobe("model", "--format", "json", "-o", str(a))
    p = uidprobe("model", "--diff", str(a), str(a))
    assert (p.returncode, p.stdout) == (0, "0 transition(s) differ\n")


def test_cli_diff_of_a_non_model_exits_65_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    p = uidprobe("model", "--diff", str(bad), str(bad))
    assert p.returncode == cli.EX_DATAERR and p.stderr.startswith(f"uidprobe: {bad}: malformed model")


def test_cli_diff_of_a_missing_file_exits_66_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "absent.json"
    p = uidprobe("model", "--diff", str(missing), str(missing))
    assert p.returncode == cli.EX_NOINPUT
    assert p.stderr == f"uidprobe: cannot read {missing}: No such file or directory\n"


@requires_tools
@requires_other_user
def test_cli_model_without_privilege_exits_77() -> None:
    p = uidprobe("model", prefix=AS_NOBODY)
    assert p.returncode == cli.EX_NOPERM and "needs root" in p.stderr


def test_cli_model_dot_output() -> None:
    assert uidprobe("model", "--gid", "--format", "dot").stdout.startswith("digraph uidprobe_gid_model {")


@pytest.mark.parametrize(("a", "b", "phrase"), [(2, 2, "the two ids must differ"), (0, 3, "0 is not a usable id")])
def test_model_ids_are_refused_before_anything_runs(a: int, b: int, phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        model.build("uid", a=a, b=b)


def test_cli_model_with_unusable_ids_exits_64() -> None:
    p = uidprobe("model", "--ids", "3,3")
    assert p.returncode == cli.EX_USAGE and "the two ids must differ" in p.stderr
