"""A second C library (#14 item 7): the runner built against musl with
``musl-gcc -static`` gives the same verdicts as the installed (glibc) one;
and csrc/ compiles cleanly under gcc -Wall -Wextra -Werror and clang
-Weverything (minus the warnings justified below).

The runner is built from every ``csrc/*.c`` except the test-only
``faults.c``, so the build follows the sources as they are split."""

from __future__ import annotations

import runpy
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import CSRC, ROOT, requires_root, run_cli
from uidprobe import suite
from uidprobe.engine import Engine, Transport

SOURCES = sorted(p for p in CSRC.glob("*.c") if p.name != "faults.c")

#: clang -Weverything warnings we do not act on, and why.
CLANG_ALLOWED = {
    "padded": "the structs mirror the cffi/wire layout; padding is expected, not a bug",
    "declaration-after-statement": "the C is C99: declarations where values are known",
    "atomic-implicit-seq-cst": "__sync_synchronize is meant as a full barrier on the shared mapping",
    "cast-qual": "posix_spawn takes char *const argv[] for historical reasons; the runner path is const",
    "missing-noreturn": "child_main ends in _exit; to be marked noreturn when engine.c is split",
    "unknown-warning-option": "older clangs do not know every name in this list",
    "unsafe-buffer-usage": "a C++ hardening diagnostic that newer clangs also apply to C arrays",
}


def optional_macros(cc: str) -> list[str]:
    """-DHAVE_X=1 for each optional call this compiler's C library links."""
    build = runpy.run_path(str(ROOT / "src" / "build_engine.py"), run_name="uidprobe_build")
    flags = []
    for name, body in build["OPTIONAL_FUNCS"].items():
        program = f"#define _GNU_SOURCE 1\n#include <unistd.h>\n#include <sys/types.h>\nint main(void) {{ {body} }}\n"
        proc = subprocess.run(
            [cc, "-Werror=implicit-function-declaration", "-x", "c", "-", "-o", "/dev/null"],
            input=program,
            text=True,
            capture_output=True,
            check=False,
        )
        if proc.returncode == 0:
            flags.append(f"-DHAVE_{name.upper()}=1")
    return flags


def kernel_headers(work: Path) -> list[str]:
    """The Linux uapi headers only (linux/, asm/, asm-generic/), for a
    compiler whose C library does not carry them: Debian's musl-gcc searches
    musl's headers alone (Alpine's linux-headers package plays this part)."""
    multiarch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True, check=False).stdout.strip()
    inc = work / "kernel-include"
    inc.mkdir()
    places = (("linux", "/usr/include"), ("asm-generic", "/usr/include"), ("asm", f"/usr/include/{multiarch}"))
    for name, where in places:
        if Path(where, name).is_dir():
            (inc / name).symlink_to(Path(where, name))
    return ["-idirafter", str(inc)]


@pytest.fixture(scope="module")
def musl_runner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("musl-gcc") is None:
        pytest.skip("needs musl-gcc (Debian: apt-get install musl-tools)")
    work = tmp_path_factory.mktemp("musl")
    out = work / "runner"
    cmd = ["musl-gcc", "-static", "-O2", "-I", str(CSRC), *kernel_headers(work), *optional_macros("musl-gcc")]
    cmd += ["-o", str(out)]
    subprocess.run([*cmd, *map(str, SOURCES)], check=True)
    out.parent.chmod(0o755)
    return out


def test_the_musl_runner_is_static_and_not_glibc(musl_runner: Path) -> None:
    info = subprocess.run(["file", str(musl_runner)], capture_output=True, text=True, check=False).stdout
    if info:
        assert "statically linked" in info
    assert b"GLIBC_" not in musl_runner.read_bytes()


@requires_root
def test_every_verdict_through_the_musl_runner_matches_the_glibc_runner(musl_runner: Path) -> None:
    glibc = Engine(None)
    assert glibc.runner is not None
    musl = Engine(None, runner=str(musl_runner))
    # SPAWN: a runner that failed must not be replaced by a fork from here.
    outcome = musl.run_batch([glibc.feature_check(None, None)], 2.0, Transport.SPAWN)[0]
    assert outcome.completed, outcome.describe_end()
    ours = suite.run(engine=musl)
    theirs = suite.run(engine=glibc)
    assert {n: (r.verdict, r.reason) for n, r in ours.items()} == {n: (r.verdict, r.reason) for n, r in theirs.items()}
    assert all(r.verdict is True for n, r in ours.items() if n != "POSIX_SAVED_IDS"), ours


@requires_root
def test_the_cli_probes_through_a_chosen_runner(musl_runner: Path) -> None:
    via_musl = run_cli("check", "USESETEUID", "--runner", str(musl_runner))
    assert via_musl.returncode == 0, via_musl.stderr
    p = run_cli("model", "--quiet", "--runner", str(musl_runner))
    assert p.returncode == 0 and "(2376 ran)" in p.stdout


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_gcc_wall_wextra_werror_is_clean(source: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    cmd = ["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-I", str(CSRC), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_clang_weverything_is_clean_but_for_the_justified_warnings(source: Path) -> None:
    if shutil.which("clang") is None:
        pytest.skip("needs clang")
    off = [f"-Wno-{w}" for w in CLANG_ALLOWED]
    cmd = ["clang", "-std=gnu11", "-Weverything", *off, "-Werror", "-fsyntax-only", "-I", str(CSRC), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
