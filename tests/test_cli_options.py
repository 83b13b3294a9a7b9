"""The CLI's option structure (#12): parent parsers, options after the
subcommand, one rule for options written before it, usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import requires_root
from helpers import run_cli as uidprobe
from uidprobe import cli, errors, store
from uidprobe.names import OBSERVED
from uidprobe.verdicts import Result


def stored(path: Path) -> Path:
    path.parent.chmod(0o755)
    store.save(str(path), {n: Result(n, True, f"test says {n}") for n in OBSERVED})
    return path


def test_the_cli_usage_error_is_the_library_one() -> None:
    assert cli.UsageError is errors.UsageError


@pytest.mark.parametrize(
    ("argv", "command", "expected"),
    [
        (["check", "X", "--timeout", "5"], "check", {"timeout": 5.0, "name": "X"}),
        (["--timeout", "5", "check", "X"], "check", {"timeout": 5.0}),
        (["--timeout", "1", "check", "X", "--timeout", "5"], "check", {"timeout": 5.0}),
        (["explain", "X", "--uids", "1,2,3", "--gids", "4,5,6"], "explain", {"uids": (1, 2, 3), "gids": (4, 5, 6)}),
        (["--json", "show"], "show", {"json": True}),
        (["show", "--json"], "show", {"json": True}),
        (["show"], "show", {"json": False}),
        (["configure", "--store", "/x", "--timeout", "3", "-q"], "configure", {"store": "/x", "timeout": 3.0}),
        (["model", "--timeout", "0.5", "--quiet"], "model", {"timeout": 0.5, "quiet": True}),
        (["--json", "--timeout", "3"], "probe", {"json": True, "timeout": 3.0, "color": "auto"}),
        ([], "probe", {"json": False, "timeout": None}),
    ],
)
def test_options_work_after_their_subcommand_and_before_it(
    argv: list[str], command: str, expected: dict[str, object]
) -> None:
    args = cli.parse(argv)
    assert args.command == command
    for key, value in expected.items():
        assert getattr(args, key) == value, key
    assert not any(k.startswith("top_") for k in vars(args))


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--json", "check", "USESETEUID"], "--json does not apply to 'check'"),
        (["--timeout", "5", "show"], "--timeout does not apply to 'show'"),
        (["--uids", "1,2,3", "list"], "--uids does not apply to 'list'"),
        (["show", "--timeout", "5"], "unrecognized arguments: --timeout 5"),
        (["check", "USESETEUID", "--json"], "unrecognized arguments: --json"),
        (["export", "json", "--json"], "unrecognized arguments: --json"),
        (["export", "shell", "--explicit"], "--explicit applies only to config-h"),
        (["check", "USESETEUID", "--runner", "/nonexistent/runner"], "is not an executable file"),
        (["model", "--store", "x"], "unrecognized arguments: --store x"),
    ],
)
def test_an_option_a_command_does_not_honour_is_one_line_and_exit_64(args: list[str], phrase: str) -> None:
    p = uidprobe(*args)
    assert p.returncode == cli.EX_USAGE, p.stderr
    assert p.stderr.splitlines()[0] == f"uidprobe: error: {p.stderr.splitlines()[0][len('uidprobe: error: ') :]}"
    assert phrase in p.stderr.splitlines()[0]
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_json_before_and_after_show_agree(tmp_path: Path) -> None:
    path = stored(tmp_path / "v")
    before = uidprobe("--json", "show", "--store", str(path))
    after = uidprobe("show", "--store", str(path), "--json")
    assert before.returncode == after.returncode == 0
    a, b = json.loads(before.stdout), json.loads(after.stdout)
    a["store"].pop("age_seconds"), b["store"].pop("age_seconds")
    assert a == b and a["schema"] == "uidprobe-show"


@requires_root
def test_check_accepts_timeout_ids_and_runner_after_the_name() -> None:
    from uidprobe.engine import default_engine

    runner = default_engine().runner
    assert runner is not None
    p = uidprobe("check", "USESETEUID", "--timeout", "5", "--uids", "1,2,3", "--runner", runner)
    assert p.returncode == cli.EX_OK, p.stderr
    assert p.stdout.startswith("USESETEUID: yes")


@requires_root
def test_runner_that_cannot_run_is_never_replaced_by_a_silent_fork(tmp_path: Path) -> None:
    fake = tmp_path / "runner"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    p = uidprobe("check", "USESETEUID", "--runner", str(fake))
    assert p.returncode == cli.EX_UNDETERMINED, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
