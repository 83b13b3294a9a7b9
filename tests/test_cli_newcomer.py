"""What a newcomer trips on first (#21): empty paths, help to a full disk,
usage errors, help text, repeated words, and the store an unprivileged user
cannot see from ``check``.  Each rule as the user meets it, through the
command run in a subprocess."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import AS_NOBODY, requires_other_user, requires_root, requires_userns, run_cli, run_python
from uidprobe import cli
from uidprobe.model import ModelError, from_json
from uidprobe.names import VERSION

COMMANDS = ["probe", "check", "explain", "list", "configure", "show", "export", "model"]


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
    return stderr[:-1]


# ------------------------------------------------------------ empty paths


@pytest.mark.parametrize(
    "args",
    [
        ["configure", "--store", ""],
        ["show", "--store", ""],
        ["export", "json", "--store", ""],
        ["export", "cflags", "-o", ""],
        ["model", "-o", ""],
        ["model", "--diff", "", "x.json"],
        ["check", "USESETEUID", "--runner", ""],
    ],
)
def test_an_empty_path_is_a_usage_error_and_nothing_is_written(tmp_path: Path, args: list[str]) -> None:
    default = tmp_path / "verdicts"
    p = run_cli(*args, env={"UIDPROBE_STORE": str(default)})
    assert p.returncode == cli.EX_USAGE, p.stderr
    assert "an empty path" in one_line(p.stderr)
    assert p.stdout == "" and not default.exists()


# ------------------------------------------------------- help, version, -V


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["-V"], ["check", "--help"], ["model", "--help"]])
def test_help_and_version_to_a_full_disk_exit_74_with_one_line(args: list[str]) -> None:
    with open("/dev/full", "w") as full:
        p = subprocess.run(
            [sys.executable, "-m", "uidprobe", *args], stdout=full, stderr=subprocess.PIPE, text=True, check=False
        )
    assert p.returncode == cli.EX_IOERR
    assert one_line(p.stderr) == "uidprobe: cannot write standard output: No space left on device"


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_dash_capital_v_is_the_version_too(flag: str) -> None:
    p = run_cli(flag)
    assert (p.returncode, p.stdout, p.stderr) == (0, f"uidprobe {VERSION}\n", "")


def _help(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # the default width
    p = subprocess.run(
        [sys.executable, "-m", "uidprobe", *args, "--help"], env=env, capture_output=True, text=True, check=False
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_no_help_line_is_wider_than_80_columns(command: str | None) -> None:
    text = _help(*([command] if command else []))
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert not wide, wide


def test_every_subcommand_has_a_description_in_its_help() -> None:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert sorted(sub.choices) == sorted(COMMANDS)
    for name, p in sub.choices.items():
        assert p.description and len(p.description) > 40, name
    assert "Probe NAME and show each call" in _help("explain")
    assert "Print every probe name" in _help("list")


def test_the_top_level_help_lists_no_subcommand_option_as_global() -> None:
    text = _help()
    heading = re.search(r"^(options|optional arguments):$", text, re.M)  # "optional arguments" before 3.10
    assert heading
    options = text[heading.start() : text.index("verdicts:")]
    for flag in ("--json", "--color", "--uids", "--gids", "--timeout", "--runner", "--store", "--quiet"):
        assert flag not in options and flag not in text.splitlines()[0], flag
    assert "'uidprobe COMMAND --help' lists them" in text
    assert "--json" in _help("probe") and "--timeout" in _help("check")


def test_options_before_the_command_are_still_accepted_where_it_honours_them(tmp_path: Path) -> None:
    p = run_cli("--json", "show", "--store", str(tmp_path / "none"))
    assert p.returncode == cli.EX_NOSTORE and json.loads(p.stdout)["schema"] == "uidprobe-show"
    assert run_cli("--json", "list").returncode == cli.EX_USAGE  # refused, never ignored


# ------------------------------------------------------------ usage errors


@pytest.mark.parametrize(
    ("args", "help_of"),
    [
        (["check", "USESETEUID", "--bogus"], "uidprobe check"),
        (["--json", "check", "USESETEUID"], "uidprobe check"),
        (["check"], "uidprobe check"),
        (["check", "NOPE"], "uidprobe check"),
        (["export", "--explicit", "cflags"], "uidprobe export"),
        (["export", "yaml"], "uidprobe export"),
        (["model", "--ids", "1"], "uidprobe model"),
        (["nope"], "uidprobe"),
        (["--bogus"], "uidprobe"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_help_of_the_command_at_fault(args: list[str], help_of: str) -> None:
    p = run_cli(*args)
    assert p.returncode == cli.EX_USAGE and p.stdout == ""
    line = one_line(p.stderr)
    assert line.startswith("uidprobe: error: ") and line.endswith(f" (see '{help_of} --help')"), line


# ------------------------------------------------------- model --diff input

PYTHON_INTERNALS = re.compile(r"\w+Error\b|object has no attribute|not subscriptable|not iterable|invalid literal")
MODEL = {"schema": "uidprobe-model", "version": 1}


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ([1, 2], "the file holds an array, not a JSON object"),
        ("x", "the file holds a string, not a JSON object"),
        (None, "the file holds null, not a JSON object"),
        ({**MODEL}, "no 'ids'"),
        ({**MODEL, "ids": {"A": "x", "B": 3}}, "ids is not what the uidprobe-model schema describes"),
        ({**MODEL, "ids": {"A": 2}}, "ids: no 'B'"),
        ({**MODEL, "ids": {"A": 2, "B": 3}, "states": []}, "no 'transitions'"),
        ({**MODEL, "ids": {"A": 2, "B": 3}, "states": [], "transitions": [{"from": [0, 0, 0]}]}, "transitions[0]: no"),
        ({**MODEL, "ids": {"A": 2, "B": 3}, "states": [], "transitions": [], "family": "x"}, "family is not what"),
    ],
)
def test_a_malformed_model_is_described_never_by_a_python_internal(doc: object, says: str) -> None:
    with pytest.raises(ModelError) as raised:
        from_json(doc)
    assert says in str(raised.value)
    assert not PYTHON_INTERNALS.search(str(raised.value)), raised.value


def test_model_diff_of_a_json_array_says_what_is_wrong_with_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([1, 2]))
    p = run_cli("model", "--diff", str(bad), str(bad))
    assert p.returncode == cli.EX_DATAERR
    assert one_line(p.stderr) == f"uidprobe: {bad}: malformed model: the file holds an array, not a JSON object"


# ----------------------------------------------------------- repeated words


def repeated(text: str) -> list[str]:
    """Phrases said twice in a row ("x: x:") or a 3-word run said twice in one line."""
    found = [m.group(0) for m in re.finditer(r"\b([\w ]+): \1:", text)]
    for line in text.splitlines():
        words = re.findall(r"\w+", line)
        runs = [" ".join(words[i : i + 3]) for i in range(len(words) - 2)]
        found += sorted({r for r in runs if runs.count(r) > 1})
    return found


def test_the_repetition_check_finds_what_it_should() -> None:
    assert repeated("USESETEUID: undetermined: undetermined: no valid store")
    assert repeated("every value is 0 (defaults, not measured): every value is 0: x")
    assert not repeated("USESETEUID: undetermined: no valid store and no live probe")


def test_no_generated_line_repeats_itself_when_the_values_are_defaults(tmp_path: Path) -> None:
    absent = str(tmp_path / "none")
    explicit = run_cli("export", "config-h", "--explicit", "--no-probe", "--store", absent)
    assert explicit.returncode == 0
    assert "/* USESETEUID: undetermined: no valid store and no live probe */" in explicit.stdout
    warned = run_cli("export", "cflags", "--no-probe", "--store", absent)
    strict = run_cli("export", "cflags", "--strict", "--no-probe", "--store", absent)
    show = run_cli("show", "--store", absent, "--json")
    for text in (explicit.stdout, explicit.stderr, warned.stderr, strict.stderr, json.loads(show.stdout)["reason"]):
        assert not repeated(text), (repeated(text), text)


@requires_userns
def test_the_build_warning_says_every_value_is_0_once(tmp_path: Path) -> None:
    code = (
        "import warnings, uidprobe\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    uidprobe.define_macros()\n"
        "print(*[str(x.message) for x in w])\n"
    )
    p = run_python(code, env={"UIDPROBE_STORE": str(tmp_path / "none")}, prefix=["unshare", "-U"])
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("uidprobe: every value is 0 (defaults, not measured): store ")
    assert p.stdout.count("every value is 0") == 1
    assert not repeated(p.stdout), p.stdout


# ------------------------------------------- a user next to root's store


@pytest.fixture
def roots_store() -> Iterator[Path]:
    """A valid store written by root where nobody can read it (the trust rule
    holds: root owns it and every directory above it)."""
    top = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        top.chmod(0o755)
        path = top / "verdicts"
        p = run_cli("configure", "--store", str(path))
        assert p.returncode == 0, p.stderr
        yield path
    finally:
        shutil.rmtree(top)


@requires_root
@requires_other_user
def test_check_as_nobody_says_a_stored_verdict_exists_and_where_to_see_it(roots_store: Path) -> None:
    p = run_cli("check", "USESETEUID", env={"UIDPROBE_STORE": str(roots_store)}, prefix=AS_NOBODY)
    assert p.returncode == cli.EX_UNDETERMINED
    assert p.stdout.startswith("USESETEUID: undetermined: this process cannot test")
    assert one_line(p.stderr) == (
        f"uidprobe: note: a stored verdict exists: USESETEUID = 1 (yes), in {roots_store}; see 'uidprobe show'"
    )
    assert run_cli("check", "USESETEUID", "-q", env={"UIDPROBE_STORE": str(roots_store)}, prefix=AS_NOBODY).stderr == ""


@requires_root
@requires_other_user
def test_probe_as_nobody_says_stored_verdicts_exist(roots_store: Path) -> None:
    p = run_cli(env={"UIDPROBE_STORE": str(roots_store)}, prefix=AS_NOBODY)
    assert p.returncode == cli.EX_UNDETERMINED
    assert p.stderr.splitlines()[-1] == f"uidprobe: note: stored verdicts exist, in {roots_store}; see 'uidprobe show'"


@requires_root
@requires_other_user
def test_without_a_store_nobody_gets_no_note(tmp_path: Path) -> None:
    p = run_cli("check", "USESETEUID", env={"UIDPROBE_STORE": str(tmp_path / "none")}, prefix=AS_NOBODY)
    assert p.returncode == cli.EX_UNDETERMINED and "stored" not in p.stderr
