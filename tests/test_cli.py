"""The uidprobe command, run as users run it: in a subprocess."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import AS_NOBODY, requires_cc, requires_other_user, requires_root, requires_tools
from helpers import run_cli as uidprobe
from uidprobe import cli, store
from uidprobe.names import OBSERVED, VERSION
from uidprobe.verdicts import Result


@pytest.fixture
def store_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="uidprobe-cli-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def stored(path: Path, verdicts: dict[str, bool | None]) -> Path:
    store.save(str(path), {n: Result(n, verdicts.get(n, True), f"test says {n}") for n in OBSERVED})
    return path


# ------------------------------------------------------------------ probing


@requires_root
def test_default_command_prints_a_table_without_colour_when_piped() -> None:
    p = uidprobe()
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["NAME", "VALUE", "VERDICT", "REASON"]
    assert lines[1].split()[:3] == ["USESETEUID", "1", "yes"]
    assert "\033[" not in p.stdout


@requires_root
def test_color_always_paints_the_verdicts() -> None:
    assert "\033[32myes\033[0m" in uidprobe("--color", "always").stdout


@requires_root
def test_json_output_has_sorted_keys_and_every_result() -> None:
    p = uidprobe("--json")
    data = json.loads(p.stdout)
    assert list(data) == sorted(data)
    assert data["USESETEUID"]["verdict"] is True and data["USESETEUID"]["value"] == 1
    assert re.match(r"setresuid\(655\d\d, 0, 0\)", data["USESETEUID"]["trace"][0])  # U: a preferred id


@requires_root
def test_check_exits_0_when_the_verdict_is_yes() -> None:
    p = uidprobe("check", "USESETEUID")
    assert p.returncode == cli.EX_OK and p.stdout.startswith("USESETEUID: yes: ")


@requires_root
def test_check_exits_1_when_the_verdict_is_no(faults_so: Path) -> None:
    env = {"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": "seteuid-moves-saved"}
    p = uidprobe("check", "USESETEUID", "--uids", "1,2,3", env=env)
    assert p.returncode == cli.EX_FALSE
    assert p.stdout == "USESETEUID: no: after seteuid(2): saved uid is 2, should be 0\n"


@requires_root
@requires_tools
@requires_other_user
def test_check_exits_2_when_undetermined() -> None:
    p = uidprobe("check", "-q", "USESETEUID", prefix=AS_NOBODY)
    assert p.returncode == cli.EX_UNDETERMINED and p.stdout == ""


@requires_root
def test_explain_says_what_each_id_should_be_and_is(faults_so: Path) -> None:
    env = {"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": "seteuid-moves-saved"}
    p = uidprobe("explain", "USESETEUID", "--uids", "1,2,3", env=env)
    assert p.returncode == 0
    assert "reason: after seteuid(2): saved uid is 2, should be 0" in p.stdout
    assert (
        "2. seteuid(2) [check, must succeed]: ok; uid should be real 1 / effective 2 / saved 0, "
        "is real 1 / effective 2 / saved 2  <-- after seteuid(2): saved uid is 2, should be 0"
    ) in p.stdout


@requires_root
@requires_tools
@requires_other_user
def test_explain_without_privilege_says_no_child_ran() -> None:
    p = uidprobe("explain", "HASSETREUID", prefix=AS_NOBODY)
    assert "no child ran" in p.stdout and "undetermined" in p.stdout


def test_list_names_every_probe() -> None:
    names = [line.split()[0] for line in uidprobe("list").stdout.splitlines()]
    assert names == [*OBSERVED, "POSIX_SAVED_IDS"]


# ---------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["check", "NOPE"], "unknown probe 'NOPE'"),
        (["explain"], "the following arguments are required: NAME"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["--uids", "1,2"], "expected exactly 3 ids U,A,B"),
        (["--uids", "a,b,c"], "expected U,A,B as 3 integers"),
        (["model", "--ids", "1"], "expected exactly 2 ids A,B"),
        (["--uids", "0,1,2"], "0 is not a usable id"),
        (["--timeout", "-1"], "timeout must be in (0, 3600]"),
        (["export", "yaml"], "invalid choice: 'yaml'"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_64_without_traceback(args: list[str], phrase: str) -> None:
    p = uidprobe(*args)
    assert p.returncode == cli.EX_USAGE
    assert p.stderr.splitlines()[0].startswith("uidprobe: error: ") and phrase in p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_help_explains_verdicts_exit_codes_and_the_store() -> None:
    p = uidprobe("--help")
    assert p.returncode == 0
    for phrase in ("undetermined", "64 bad usage", "uidprobe configure", "/var/lib/uidprobe/verdicts"):
        assert phrase in p.stdout


def test_version_prints_the_name_and_version_and_exits_0() -> None:
    p = uidprobe("--version")
    assert (p.returncode, p.stdout, p.stderr) == (0, f"uidprobe {VERSION}\n", "")


@settings(max_examples=40, deadline=None)
@given(
    args=st.lists(
        st.sampled_from(
            [
                "check",
                "explain",
                "show",
                "export",
                "list",
                "--json",
                "--store",
                "--uids",
                "1,2,3",
                "x",
                "-q",
                "--timeout",
                "0",
                "NOPE",
                "config-h",
                "--no-probe",
                "--color",
                "never",
                "",
                "\x00",
                "-",
            ]
        ),
        max_size=5,
    )
)
def test_fuzzed_arguments_give_a_documented_exit_code_and_no_traceback(args: list[str]) -> None:
    if "\x00" in "".join(args):
        args = [a.replace("\x00", "") for a in args]  # argv cannot carry NUL bytes
    p = uidprobe(*args, env={store.ENV_VAR: "/nonexistent/uidprobe.json"})
    assert "Traceback" not in p.stderr
    assert p.returncode in (cli.EX_OK, cli.EX_FALSE, cli.EX_UNDETERMINED, cli.EX_NOSTORE, cli.EX_USAGE)


# ------------------------------------------------------------- configure


@requires_root
def test_configure_as_root_writes_the_store_and_says_where(store_dir: Path) -> None:
    path = store_dir / "verdicts"
    p = uidprobe("configure", "--store", str(path))
    assert p.returncode == 0 and p.stdout == f"wrote {len(OBSERVED)} verdicts to {path}\n"
    assert store.load(str(path)).valid


@requires_root
def test_configure_uses_the_environment_store_path(store_dir: Path) -> None:
    path = store_dir / "env.json"
    assert uidprobe("configure", env={store.ENV_VAR: str(path)}).returncode == 0
    assert path.exists()


@requires_root
@requires_tools
@requires_other_user
def test_configure_as_non_root_exits_77_and_writes_nothing(store_dir: Path) -> None:
    path = store_dir / "verdicts"
    store_dir.chmod(0o777)
    p = uidprobe("configure", "--store", str(path), prefix=AS_NOBODY)
    assert p.returncode == cli.EX_NOPERM
    assert "configure must run as root" in p.stderr and "nothing was written" in p.stderr
    assert list(store_dir.iterdir()) == []


@requires_root
def test_configure_to_an_unwritable_path_exits_73_with_one_line() -> None:
    p = uidprobe("configure", "--store", "/proc/1/nope/verdicts")
    assert p.returncode == cli.EX_CANTCREAT
    assert p.stderr == (
        "uidprobe: cannot write /proc/1/nope/verdicts: "
        "cannot create directory /proc/1/nope: No such file or directory\n"
    )


@requires_root
def test_configure_into_an_unsafe_directory_is_refused_with_73_and_writes_nothing(store_dir: Path) -> None:
    store_dir.chmod(0o777)
    p = uidprobe("configure", "--store", str(store_dir / "v.json"))
    assert p.returncode == cli.EX_CANTCREAT
    why = f"directory {store_dir} is writable by others (mode 0777)"
    assert p.stderr == f"uidprobe: cannot write {store_dir}/v.json: {why}\n"
    assert list(store_dir.iterdir()) == []


# ------------------------------------------------------------------ show


def test_show_reports_store_source_fingerprint_and_age(store_dir: Path) -> None:
    path = stored(store_dir / "v.json", {"HASSETREUID": False})
    p = uidprobe("show", "--store", str(path))
    assert p.returncode == 0
    assert p.stdout.startswith(f"source:      store (read from {path})\n")
    assert "fingerprint: format=1, kernel_release=" in p.stdout
    assert "age:         0 seconds" in p.stdout or "age:         1 seconds" in p.stdout
    assert "  HASSETREUID         = 0   (test says HASSETREUID)" in p.stdout


def test_show_json_says_why_a_store_was_ignored(store_dir: Path) -> None:
    path = stored(store_dir / "v.json", {})
    store_dir.chmod(0o775)
    data = json.loads(uidprobe("show", "--json", "--store", str(path)).stdout)
    assert data["store"]["valid"] is False
    assert data["store"]["status"] == f"unsafe: directory {store_dir} is writable by group (mode 0775)"
    assert data["source"] in ("probe", "default")


def test_show_reports_a_stale_store(store_dir: Path) -> None:
    path = stored(store_dir / "v.json", {})
    text = path.read_text()
    release = store.current_fingerprint()["kernel_release"]
    path.write_text(text.replace(f"fingerprint kernel_release {release}\n", "fingerprint kernel_release 2.0.36\n"))
    out = uidprobe("show", "--store", str(path)).stdout
    assert "stale: kernel_release is" in out and "'2.0.36' in the store" in out


# ---------------------------------------------------------------- export

C_PROGRAM = """
#include <stdio.h>
#ifdef WITH_CONFIG_H
#include "uidprobe_config.h"
#endif
int main(void) {
#if defined(USESETEUID)
    puts("seteuid");
#elif defined(HASSETREUID)
    puts("setreuid");
#else
    puts("setuid only");
#endif
    return 0;
}
"""


def compile_and_run(tmp: Path, flags: list[str]) -> str:
    (tmp / "prog.c").write_text(C_PROGRAM)
    subprocess.run(["cc", *flags, "-I", str(tmp), "-o", str(tmp / "prog"), str(tmp / "prog.c")], check=True)
    return subprocess.run([str(tmp / "prog")], capture_output=True, text=True, check=True).stdout.strip()


@requires_cc
@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ({}, "seteuid"),
        ({"USESETEUID": False}, "setreuid"),
        ({"USESETEUID": None, "HASSETREUID": False}, "setuid only"),
    ],
)
def test_config_h_fragment_compiles_and_decides_the_mechanism(
    tmp_path: Path, store_dir: Path, verdicts: dict[str, bool | None], expected: str
) -> None:
    path = stored(store_dir / "v.json", verdicts)
    header = uidprobe("export", "config-h", "--store", str(path)).stdout
    assert "/* USESETEUID: test says USESETEUID */" in header
    (tmp_path / "uidprobe_config.h").write_text(header)
    assert compile_and_run(tmp_path, ["-DWITH_CONFIG_H", "-Wall", "-Werror"]) == expected


@requires_cc
@pytest.mark.parametrize(
    ("verdicts", "flagged", "expected"),
    [({}, True, "seteuid"), ({"USESETEUID": False}, False, "setreuid")],
)
def test_cflags_change_the_c_programs_behaviour(
    tmp_path: Path, store_dir: Path, verdicts: dict[str, bool | None], flagged: bool, expected: str
) -> None:
    path = stored(store_dir / "v.json", verdicts)
    flags = uidprobe("export", "cflags", "--store", str(path)).stdout.split()
    assert ("-DUSESETEUID=1" in flags) is flagged
    assert compile_and_run(tmp_path, flags) == expected


def test_shell_lines_can_be_sourced(store_dir: Path) -> None:
    path = stored(store_dir / "v.json", {"HASSETREUID": False})
    lines = uidprobe("export", "shell", "--store", str(path)).stdout
    out = subprocess.run(
        ["sh", "-c", 'eval "$0"; echo "$USESETEUID $HASSETREUID"', lines],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "1 0\n"


def test_export_json_includes_the_source(store_dir: Path) -> None:
    path = stored(store_dir / "v.json", {})
    data = json.loads(uidprobe("export", "json", "--store", str(path)).stdout)
    assert data == {**dict.fromkeys(OBSERVED, 1), "SOURCE": "store", "schema": "uidprobe-export", "version": 1}


def test_export_without_store_and_without_probing_gives_all_zero(store_dir: Path) -> None:
    out = uidprobe("export", "shell", "--no-probe", "--store", str(store_dir / "none.json")).stdout
    assert out == "".join(f"{n}=0\n" for n in OBSERVED)


def test_reasons_cannot_close_the_config_h_comment(store_dir: Path) -> None:
    path = store_dir / "v.json"
    store.save(str(path), {n: Result(n, True, "evil */ #define X 1 /*") for n in OBSERVED})
    header = uidprobe("export", "config-h", "--store", str(path)).stdout
    assert "*/ #define X" not in header
