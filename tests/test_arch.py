"""Other architectures (#20): the runner announces its wire format and the
engine refuses one built for another ABI, naming both sides; a failed runner
fails every scenario it did not answer; rawsys.h takes a system call
instruction only where its calling model holds (not on x32).

The cross-built runners come from Debian's cross compilers
(gcc-i686-linux-gnu, gcc-aarch64-linux-gnu, gcc-s390x-linux-gnu) through
scripts/build_runner.py; the foreign ones run natively (i686) or under
qemu-user-static through a two-line wrapper.  ``.ci/arch`` goes further: the
whole test suite in an i386 root, and every verdict and both models on
aarch64 and s390x compared with this machine's."""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from helpers import CSRC, ROOT, requires_root, run_cli
from uidprobe import suite
from uidprobe.engine import Engine, EngineError, Op, Step, Transport, default_engine

BUILD = runpy.run_path(str(ROOT / "scripts" / "build_runner.py"), run_name="build_runner")
CROSS = {"i686": "i686-linux-gnu-gcc", "aarch64": "aarch64-linux-gnu-gcc", "s390x": "s390x-linux-gnu-gcc"}
#: what each announces: word size and byte order
EXPECTED = {"i686": "32 little", "aarch64": "64 little", "s390x": "64 big"}


@pytest.fixture(scope="module")
def cross_runners(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each cross runner this machine can build and run: the binary itself
    where the kernel runs it (i686 on x86_64), else a qemu-user wrapper."""
    work = tmp_path_factory.mktemp("cross")
    work.chmod(0o755)
    machine = os.uname().machine
    out = {}
    for arch, cc in CROSS.items():
        if shutil.which(cc) is None:
            continue
        binary = BUILD["build"](cc, work / f"runner-{arch}")
        if arch == machine or (arch == "i686" and machine == "x86_64"):
            out[arch] = binary
            continue
        qemu = shutil.which(f"qemu-{arch}-static")
        if qemu is None:
            continue
        wrapper = work / f"qemu-{arch}"
        wrapper.write_text(f'#!/bin/sh\nexec {qemu} {binary} "$@"\n')
        wrapper.chmod(0o755)
        out[arch] = wrapper
    return out


def runner_for(cross_runners: dict[str, Path], arch: str) -> Path:
    if arch not in cross_runners:
        pytest.skip(f"needs {CROSS[arch]} (and qemu-{arch}-static unless this machine runs {arch} code)")
    return cross_runners[arch]


# ------------------------------------------------------- the announcement


def test_the_runner_announces_its_wire_format_before_it_reads_anything() -> None:
    engine = default_engine()
    assert engine.runner is not None
    with subprocess.Popen([engine.runner, str(os.getpid())], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as p:
        assert p.stdout is not None and p.stdin is not None
        line = p.stdout.readline().decode()  # stdin still open: it has read nothing yet
        p.stdin.close()
        assert p.wait(timeout=10) == 1  # then EOF: bad input, nothing run
        assert p.stdout.read() == b""
    assert line == engine.wire_abi + "\n"
    bits = 8 * struct.calcsize("P")
    assert re.fullmatch(
        rf"uidprobe-wire/1 {bits} (little|big) header=\d+ step=\d+ record=\d+ outcome=\d+", engine.wire_abi
    )
    ffi = engine.ffi
    sizes = [ffi.sizeof(f"struct up_{name}") for name in ("step", "record", "outcome")]
    assert engine.wire_abi.endswith("step={} record={} outcome={}".format(*sizes))


@pytest.mark.parametrize("arch", CROSS)
def test_each_cross_built_runner_announces_its_word_size_and_byte_order(
    cross_runners: dict[str, Path], arch: str
) -> None:
    announced = default_engine().runner_wire(str(runner_for(cross_runners, arch)))
    assert announced is not None and announced.startswith(f"uidprobe-wire/1 {EXPECTED[arch]} ")


@requires_root
@pytest.mark.parametrize("arch", CROSS)
def test_a_cross_built_runner_gives_this_engines_verdicts_or_is_refused_naming_both_sides(
    cross_runners: dict[str, Path], arch: str
) -> None:
    runner = str(runner_for(cross_runners, arch))
    ours = default_engine()
    theirs = ours.runner_wire(runner)
    engine = Engine(None, runner=runner, fallback=False)
    if theirs == ours.wire_abi:  # aarch64 beside x86_64: the same structs
        got = {n: (r.verdict, r.reason) for n, r in suite.run(engine=engine).items()}
        assert got == {n: (r.verdict, r.reason) for n, r in suite.run().items()}
        return
    # Not a verdict, not a fallback to forking here: an error naming both.
    with pytest.raises(EngineError) as e:
        suite.run(engine=engine)
    assert f"runner {runner} speaks {theirs!r}, this engine {ours.wire_abi!r}: refused" in str(e.value)
    with pytest.raises(EngineError):  # AUTO does not fall back either
        Engine(None, runner=runner).run([Step(Op.SETUID, (0,))])
    p = run_cli("--runner", runner)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.splitlines() == [f"uidprobe: {e.value.strerror}"]


def test_on_a_64_bit_engine_the_i686_runner_is_foreign(cross_runners: dict[str, Path]) -> None:
    # The case #20 found: an i686 runner read an x86_64 request, ran its
    # children as root, and its garbled replies became invented reasons.
    if " 64 little " not in default_engine().wire_abi:
        pytest.skip("this engine is not 64-bit little-endian")
    runner = str(runner_for(cross_runners, "i686"))
    with pytest.raises(EngineError, match=r"speaks 'uidprobe-wire/1 32 little .*this engine 'uidprobe-wire/1 64 "):
        Engine(None, runner=runner, fallback=False).run([Step(Op.SETUID, (0,))])


# ---------------------------------------------------------- a failed runner


def test_a_runner_that_fails_fails_every_scenario_it_did_not_answer() -> None:
    engine = Engine(None, runner="/bin/false", fallback=False)
    outs = engine.run_batch([[Step(Op.SETUID, (0,))]] * 5, 2.0, Transport.SPAWN)
    assert [o.error for o in outs] == ["runner failed: EPIPE (Broken pipe)"] * 5
    assert all(o.describe_end() == "could not start a probe child: runner failed: EPIPE (Broken pipe)" for o in outs)


@requires_root
def test_the_cli_says_runner_failed_for_every_probe() -> None:
    p = run_cli("--json", "--runner", "/bin/false")
    assert p.returncode == 2
    doc = json.loads(p.stdout)
    reasons = {n: v["reason"] for n, v in doc.items() if isinstance(v, dict) and v["kind"] == "observed"}
    assert reasons and all("runner failed" in r for r in reasons.values()), reasons


# ------------------------------------------------------ rawsys.h's choice

#: the stub headers rawsys.h includes, so that only the compiler's own
#: predefined macros decide (no C library for x32 is installed here)
STUBS = ("errno.h", "sched.h", "sys/syscall.h", "unistd.h")
INSTRUCTION = {"syscall": '"syscall"', "svc": '"svc 0"', "int80": '"int $0x80"'}


def rawsys_choice(cc: list[str], tmp: Path) -> tuple[str, str]:
    """(UP_RAW_SYSCALLS, the instruction used or "syscall()") for ``cc``."""
    for name in STUBS:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text("")
    src = tmp / "choice.c"
    src.write_text('#define _GNU_SOURCE 1\n#include "rawsys.h"\n')
    base = [*cc, "-nostdinc", "-I", str(tmp), "-I", str(CSRC), "-E", str(src)]
    macros = subprocess.run([*base, "-dM"], capture_output=True, text=True, check=True).stdout
    code = subprocess.run(base, capture_output=True, text=True, check=True).stdout
    value = re.search(r"^#define UP_RAW_SYSCALLS (\d)$", macros, re.M)
    assert value, macros
    used = [name for name, text in INSTRUCTION.items() if text in code]
    return value.group(1), used[0] if len(used) == 1 else "syscall()" if not used else "several"


def compiler_takes(cc: list[str]) -> bool:
    return subprocess.run([*cc, "-E", "-x", "c", "/dev/null"], capture_output=True, check=False).returncode == 0


@pytest.mark.parametrize(
    ("cc", "expected"),
    [
        (["gcc", "-m64"], ("1", "syscall")),
        (["gcc", "-m32"], ("1", "int80")),
        # x32: __x86_64__ with 4-byte longs and pointers; the LP64 path
        # would pass them in 64-bit registers as if they were 8 bytes.
        (["gcc", "-mx32"], ("0", "syscall()")),
        (["aarch64-linux-gnu-gcc"], ("1", "svc")),
        (["i686-linux-gnu-gcc"], ("1", "int80")),
        (["s390x-linux-gnu-gcc"], ("1", "svc")),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_rawsys_takes_an_instruction_only_where_its_calling_model_holds(
    tmp_path: Path, cc: list[str], expected: tuple[str, str]
) -> None:
    if shutil.which(cc[0]) is None or not compiler_takes(cc):
        pytest.skip(f"needs {' '.join(cc)}")
    if cc[-1] in ("-m64", "-m32") and os.uname().machine != "x86_64":
        pytest.skip("the -m64/-m32 pair is x86's")
    assert rawsys_choice(cc, tmp_path) == expected
