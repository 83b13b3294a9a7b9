"""Fleet outputs (#14 item 6): the Prometheus textfile parses with
prometheus_client's parser, and every JSON output validates against the
JSON Schema shipped in the package and says which schema it follows."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import requires_root, run_cli
from uidprobe import exporters, store
from uidprobe.names import OBSERVED
from uidprobe.verdicts import Result


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    path = tmp_path / "v"
    verdicts = {"USESETEUID": False, "HASSETREUID": None}
    store.save(str(path), {n: Result(n, verdicts.get(n, True), f'reason "{n}" \\ x') for n in OBSERVED})
    return path


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_prometheus_has_a_gauge_per_verdict_and_the_store_state(store_path: Path) -> None:
    p = run_cli("export", "prometheus", "--store", str(store_path))
    assert p.returncode == 0, p.stderr
    fams = families(p.stdout)
    assert {f.type for f in fams.values()} == {"gauge"}
    values = {s.labels["name"]: s.value for s in fams["uidprobe_value"].samples}
    assert values == {**dict.fromkeys(OBSERVED, 1.0), "USESETEUID": 0.0, "HASSETREUID": 0.0}
    verdicts = {(s.labels["name"], s.labels["verdict"]): s.value for s in fams["uidprobe_verdict"].samples}
    assert len(verdicts) == 3 * len(OBSERVED)
    assert verdicts["USESETEUID", "no"] == 1 and verdicts["USESETEUID", "yes"] == 0
    assert verdicts["HASSETREUID", "undetermined"] == 1 and verdicts["HASSETREUID", "no"] == 0
    assert verdicts["SETUID_PERMANENT", "yes"] == 1
    for name in OBSERVED:
        assert sum(verdicts[name, w] for w in ("yes", "no", "undetermined")) == 1
    assert [s.value for s in fams["uidprobe_store_valid"].samples] == [1.0]
    (age,) = fams["uidprobe_store_age_seconds"].samples
    assert 0 <= age.value < 60
    source = {s.labels["source"]: s.value for s in fams["uidprobe_source"].samples}
    assert source == {"store": 1.0, "probe": 0.0, "default": 0.0}


def test_prometheus_without_a_store_says_invalid_and_age_unknown(tmp_path: Path) -> None:
    p = run_cli("export", "prometheus", "--no-probe", "--store", str(tmp_path / "none"))
    fams = families(p.stdout)
    assert [s.value for s in fams["uidprobe_store_valid"].samples] == [0.0]
    assert math.isnan(fams["uidprobe_store_age_seconds"].samples[0].value)
    source = {s.labels["source"]: s.value for s in fams["uidprobe_source"].samples}
    assert source["default"] == 1.0
    assert {s.labels["verdict"] for s in fams["uidprobe_verdict"].samples if s.value == 1} == {"undetermined"}


def validate(doc: Any, schema: str) -> None:
    assert doc["schema"] == schema and doc["version"] == 1
    with open(exporters.schema_path(schema), encoding="utf-8") as f:
        spec = json.load(f)
    jsonschema.Draft202012Validator.check_schema(spec)
    jsonschema.validate(doc, spec, cls=jsonschema.Draft202012Validator)


def test_the_schemas_ship_inside_the_package() -> None:
    for name in ("uidprobe-verdicts", "uidprobe-show", "uidprobe-export", "uidprobe-model"):
        assert Path(exporters.schema_path(name)).is_file(), name


def test_show_json_follows_its_schema(store_path: Path, tmp_path: Path) -> None:
    validate(json.loads(run_cli("show", "--json", "--store", str(store_path)).stdout), "uidprobe-show")
    absent = json.loads(run_cli("show", "--json", "--store", str(tmp_path / "none")).stdout)
    validate(absent, "uidprobe-show")


def test_export_json_follows_its_schema(store_path: Path) -> None:
    doc = json.loads(run_cli("export", "json", "--store", str(store_path)).stdout)
    validate(doc, "uidprobe-export")
    assert doc["USESETEUID"] == 0 and doc["SETUID_PERMANENT"] == 1 and doc["SOURCE"] == "store"


def test_a_document_of_another_shape_fails_the_schema(store_path: Path) -> None:
    doc = json.loads(run_cli("export", "json", "--store", str(store_path)).stdout)
    doc["USESETEUID"] = 2
    with pytest.raises(jsonschema.ValidationError):
        validate(doc, "uidprobe-export")


@requires_root
def test_probe_json_follows_its_schema() -> None:
    doc = json.loads(run_cli("--json").stdout)
    validate(doc, "uidprobe-verdicts")
    assert set(doc) == {"schema", "version", *OBSERVED, "POSIX_SAVED_IDS"}


@requires_root
def test_model_json_follows_its_schema() -> None:
    p = run_cli("model", "--format", "json", "--quiet")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    validate(doc, "uidprobe-model")
    assert len(doc["transitions"]) == 2376
