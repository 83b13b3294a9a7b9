"""The config values and verdicts in the formats other tools read.

Every JSON document carries ``"schema"`` and ``"version"``; the JSON Schema
for each ships in ``uidprobe/schemas/<schema>.json`` (``schema_path()``).

* ``uidprobe-verdicts`` 1: ``uidprobe --json`` (a probe run: every Result)
* ``uidprobe-show`` 1: ``uidprobe show --json`` (values and their provenance)
* ``uidprobe-export`` 1: ``uidprobe export json`` (flat NAME: 0/1, SOURCE)
* ``uidprobe-model`` 1: ``uidprobe model --format json`` (``uidprobe.model``)

``prometheus`` is the node_exporter textfile-collector format.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from uidprobe.names import VERSION

if TYPE_CHECKING:
    from uidprobe.resolve import Snapshot
    from uidprobe.verdicts import Result

__all__ = [
    "EXPORT_SCHEMA",
    "FORMATS",
    "SCHEMA_VERSION",
    "SHOW_SCHEMA",
    "VERDICTS_SCHEMA",
    "render",
    "result_dict",
    "schema_path",
    "show_doc",
    "verdicts_doc",
]

VERDICTS_SCHEMA = "uidprobe-verdicts"
SHOW_SCHEMA = "uidprobe-show"
EXPORT_SCHEMA = "uidprobe-export"
#: Version of the three schemas above (the model has its own: uidprobe.model.VERSION).
SCHEMA_VERSION = 1

FORMATS = ("config-h", "cflags", "shell", "json", "prometheus")

_WORDS = {True: "yes", False: "no", None: "undetermined"}


def schema_path(schema: str) -> str:
    """The JSON Schema file shipped for ``schema`` (e.g. "uidprobe-show")."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas", f"{schema}.json")


def dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def result_dict(r: Result) -> dict[str, Any]:
    """A Result as JSON-ready data."""
    return {
        "name": r.name,
        "verdict": r.verdict,
        "value": r.value,
        "reason": r.reason,
        "kind": r.kind.value,
        "meaning": r.meaning,
        "trace": [line.describe() for line in r.trace],
    }


def verdicts_doc(results: Mapping[str, Result]) -> dict[str, Any]:
    """``uidprobe --json``: every result by name, beside the schema and version."""
    return {"schema": VERDICTS_SCHEMA, "version": SCHEMA_VERSION, **{n: result_dict(r) for n, r in results.items()}}


def show_doc(snap: Snapshot) -> dict[str, Any]:
    """``uidprobe show --json``."""
    loaded = snap.loaded
    return {
        "schema": SHOW_SCHEMA,
        "version": SCHEMA_VERSION,
        "source": snap.source,
        "reason": snap.reason,
        "store": {
            "path": loaded.path,
            "status": loaded.reason,
            "valid": loaded.valid,
            "fingerprint": loaded.fingerprint,
            "created": loaded.created,
            "age_seconds": snap.age,
        },
        "values": snap.values,
        "verdicts": snap.verdicts,
    }


def _comment(text: str) -> str:
    return "/* " + text.replace("*/", "* /") + " */"  # a reason must not end the comment


def _config_h(snap: Snapshot, explicit: bool) -> str:
    lines = [
        _comment(f"uidprobe {VERSION}: probed set*id behaviour"),
        _comment(f"source: {snap.source}; {snap.reason}"),
        "",
    ]
    for n, x in snap.values.items():
        word = _WORDS[snap.verdicts.get(n)]
        if explicit:
            lines.append(_comment(f"{n}: {word}: {snap.reasons[n]}"))
            lines.append(f"#define {n} {1 if x else 0}")
        else:
            lines.append(_comment(f"{n}: {snap.reasons[n]}"))
            lines.append(f"#define {n} 1" if x else f"/* #undef {n} */")
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _prometheus(snap: Snapshot, now: float | None = None) -> str:
    """node_exporter textfile format: gauges only, one family per HELP/TYPE."""
    now = time.time() if now is None else now
    out: list[str] = []

    def family(name: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            text = "NaN" if math.isnan(value) else repr(float(value)) if value != int(value) else str(int(value))
            out.append(f"{name}{{{inner}}} {text}" if inner else f"{name} {text}")

    family(
        "uidprobe_value",
        "The config value a C build gets (1 only when the verdict is yes).",
        [({"name": n}, x) for n, x in snap.values.items()],
    )
    family(
        "uidprobe_verdict",
        "1 for the probe's verdict (yes, no or undetermined), 0 for the other two.",
        [
            ({"name": n, "verdict": w}, 1 if _WORDS[snap.verdicts.get(n)] == w else 0)
            for n in snap.values
            for w in ("yes", "no", "undetermined")
        ],
    )
    family(
        "uidprobe_source",
        "1 for where the values came from (store, probe or default), 0 for the others.",
        [({"source": s}, 1 if snap.source == s else 0) for s in ("store", "probe", "default")],
    )
    family("uidprobe_store_valid", "1 when the store is valid and current here, else 0.", [({}, snap.loaded.valid)])
    created = snap.loaded.created
    family(
        "uidprobe_store_age_seconds",
        "Seconds since the store was written (NaN when there is no readable store).",
        [({}, max(0.0, now - created) if created is not None else math.nan)],
    )
    family("uidprobe_info", "uidprobe's version.", [({"version": VERSION}, 1)])
    return "\n".join(out) + "\n"


def render(fmt: str, snap: Snapshot, *, explicit: bool = False) -> str:
    """The values in one of FORMATS.  ``explicit`` (config-h only): ``#define
    NAME 0`` for no and undetermined too, as meson's ``set10`` does."""
    v = snap.values
    if fmt == "cflags":
        return " ".join(f"-D{n}=1" for n, x in v.items() if x) + "\n"
    if fmt == "shell":
        return "".join(f"{n}={x}\n" for n, x in v.items())
    if fmt == "json":
        return dumps({**v, "SOURCE": snap.source, "schema": EXPORT_SCHEMA, "version": SCHEMA_VERSION})
    if fmt == "prometheus":
        return _prometheus(snap)
    if fmt == "config-h":
        return _config_h(snap, explicit)
    raise ValueError(f"unknown export format {fmt!r}; one of: {', '.join(FORMATS)}")
