"""The C engine: forks, records, ends and cleans up as specified."""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import requires_root, run_python
from procinfo import identity, open_fds, zombies_of_this_process
from uidprobe import _engine, engine
from uidprobe.engine import Engine, Op, Step, default_engine

#: The installed engine, as every caller gets it.
ENGINE = default_engine()


def test_python_limits_match_the_compiled_engine() -> None:
    assert engine.MAX_ARGS == _engine.lib.UP_MAX_ARGS
    assert engine.MAX_STEPS == _engine.lib.UP_MAX_STEPS
    assert [op.value for op in Op] == [getattr(_engine.lib, f"UP_OP_{op.name}") for op in Op]


def test_features_report_the_res_calls_this_c_library_provides() -> None:
    f = ENGINE.built
    assert f.getresuid and f.setresuid and f.getresgid and f.setresgid


@requires_root
def test_each_step_is_recorded_with_its_read_back_ids() -> None:
    out = ENGINE.run([Step(Op.SETRESUID, (1, 0, 0)), Step(Op.SETEUID, (2,))])
    assert out.completed
    assert [r.uids for r in out.records] == [(1, 0, 0), (1, 2, 0)]
    assert [r.ret for r in out.records] == [0, 0]


@requires_root
def test_a_failing_call_records_its_errno_and_the_unchanged_ids() -> None:
    out = ENGINE.run([Step(Op.SETUID, (5,)), Step(Op.SETUID, (0,))])
    failed = out.records[1]
    assert (failed.ret, failed.errno, failed.uids) == (-1, 1, (5, 5, 5))  # EPERM


@requires_root
def test_setgroups_step_reads_the_group_list_back() -> None:
    out = ENGINE.run([Step(Op.SETGROUPS, (7, 8)), Step(Op.SETGROUPS, ())])
    assert [r.groups for r in out.records] == [(7, 8), ()]


def test_an_empty_step_list_completes_with_no_records() -> None:
    out = ENGINE.run([])
    assert out.completed and out.records == () and out.exit_code == 0


def test_more_steps_than_the_engine_holds_are_refused_before_forking() -> None:
    with pytest.raises(ValueError, match="at most 64 steps"):
        ENGINE.run([Step(Op.SETEUID, (0,))] * 65)


def test_ids_outside_uid_t_are_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        Step(Op.SETUID, (2**32,))


def test_non_positive_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout"):
        ENGINE.run([], timeout=0)


def test_batch_gives_one_outcome_per_step_list_in_order() -> None:
    outs = ENGINE.run_batch([[Step(Op.SETEUID, (0,))], [], [Step(Op.SETGID, (0,))] * 2])
    assert [len(o.records) for o in outs] == [1, 0, 2]
    assert all(o.completed for o in outs)


def test_runs_leave_no_open_fd_and_no_zombie() -> None:
    e = Engine()
    before = open_fds()
    for _ in range(50):
        e.run([Step(Op.SETEUID, (os.geteuid(),))])
    assert open_fds() == before
    assert zombies_of_this_process() == []


@pytest.fixture
def sigchld(request: pytest.FixtureRequest) -> Iterator[list[int]]:
    """Install the SIGCHLD disposition named by the test's parameter."""
    seen: list[int] = []
    mode = request.param
    handler = signal.SIG_IGN if mode == "ignored" else (lambda signum, frame: seen.append(signum))
    old = signal.signal(signal.SIGCHLD, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGCHLD, old)


@pytest.mark.parametrize("sigchld", ["ignored", "handler"], indirect=True)
def test_run_completes_whatever_the_sigchld_disposition(sigchld: list[int]) -> None:
    out = ENGINE.run([Step(Op.SETEUID, (os.geteuid(),))])
    assert out.completed and len(out.records) == 1
    assert zombies_of_this_process() == []


def test_run_works_while_other_python_threads_are_busy() -> None:
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            x += 1

    threads = [threading.Thread(target=spin) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        outs = [ENGINE.run([Step(Op.SETEUID, (os.geteuid(),))]) for _ in range(20)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert all(o.completed for o in outs)


def test_a_crashing_child_is_reported_and_reaped(faults_so: Path) -> None:
    code = (
        "import os, uidprobe.engine as e\n"
        "o = e.default_engine().run([e.Step(e.Op.SETEUID, (0,))])\n"
        "print(o.completed, o.signal, o.describe_end())\n"
    )
    proc = run_python(code, env={"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": "crash"})
    assert proc.stdout.split()[:2] == ["False", str(int(signal.SIGSEGV))]
    assert "killed by SIGSEGV after 0 step(s)" in proc.stdout


def test_a_hanging_child_is_killed_at_the_deadline(faults_so: Path) -> None:
    code = (
        "import time, uidprobe.engine as e\n"
        "t = time.monotonic()\n"
        "o = e.default_engine().run([e.Step(e.Op.SETEUID, (0,))], timeout=0.2)\n"
        "print(o.timed_out, o.signal, round(time.monotonic() - t, 1))\n"
    )
    proc = run_python(code, env={"LD_PRELOAD": str(faults_so), "UIDPROBE_FAULT": "hang"})
    timed_out, sig, elapsed = proc.stdout.split()
    assert (timed_out, sig) == ("True", str(int(signal.SIGKILL)))
    assert float(elapsed) < 1.5  # generous: only proves the 2 s default did not apply


@requires_root
def test_parent_ids_groups_and_caps_are_unchanged_after_a_full_drop_in_the_child() -> None:
    before = identity()
    ENGINE.run([Step(Op.SETGROUPS, (9,)), Step(Op.SETRESGID, (9, 9, 9)), Step(Op.SETRESUID, (9, 9, 9))])
    assert identity() == before


def test_run_completes_while_a_timer_signal_interrupts_the_parent_constantly() -> None:
    # Every poll()/waitpid() in the parent sees EINTR many times over.
    hits: list[int] = []
    old = signal.signal(signal.SIGALRM, lambda signum, frame: hits.append(signum))
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    try:
        outs = [ENGINE.run([Step(Op.SETEUID, (os.geteuid(),))]) for _ in range(30)]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    assert all(o.completed for o in outs)
    assert hits, "the timer never fired: the test proved nothing"


def test_the_runner_program_is_installed_beside_the_engine() -> None:
    assert ENGINE.runner is not None and os.access(ENGINE.runner, os.X_OK)
    assert Path(ENGINE.runner).parent == Path(_engine.__file__).parent


@requires_root
def test_spawned_runner_and_in_process_fork_give_the_same_trace() -> None:
    steps = [Step(Op.SETRESUID, (1, 0, 0)), Step(Op.SETEUID, (2,)), Step(Op.SETUID, (0,)), Step(Op.SETGROUPS, (4,))]
    spawned = ENGINE.run(steps, via="spawn")
    forked = ENGINE.run(steps, via="fork")
    assert spawned.records == forked.records and spawned.completed and forked.completed


def test_auto_falls_back_to_forking_when_the_runner_cannot_be_started() -> None:
    broken = Engine(_engine, runner="/nonexistent/_runner")
    assert broken.run([Step(Op.SETEUID, (os.geteuid(),))]).completed


def test_explicit_spawn_without_a_runner_is_an_engine_error() -> None:
    with pytest.raises(engine.EngineError, match="runner program is not installed"):
        Engine(_engine, runner=None).run([], via="spawn")


def test_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="'thread' is not a valid Transport"):
        ENGINE.run([], via="thread")


def test_a_batch_larger_than_the_runners_chunk_keeps_order() -> None:
    uid = os.geteuid()
    outs = ENGINE.run_batch([[Step(Op.SETEUID, (uid,))] * (i % 3) for i in range(150)], via="spawn")
    assert [len(o.records) for o in outs] == [i % 3 for i in range(150)]
    assert all(o.completed for o in outs)


@requires_root
def test_a_batch_split_over_parallel_runners_gives_the_same_traces_in_order() -> None:
    batch = [[Step(Op.SETRESUID, (i % 5 + 1, 0, 0)), Step(Op.SETEUID, (i % 7 + 1,))] for i in range(300)]
    one = ENGINE.run_batch(batch, via="spawn", jobs=1)
    three = ENGINE.run_batch(batch, via="spawn", jobs=3)
    assert [o.records for o in one] == [o.records for o in three]
    assert [o.records[1].uids[1] for o in three] == [i % 7 + 1 for i in range(300)]


def _fields_via_cffi(r: Any, unknown: int) -> tuple[object, ...]:
    """A record read field by field through cffi: the reference the byte
    decoder must agree with."""

    def triple(raw: Any) -> tuple[int, int, int | None]:
        a, b, c = (int(raw[i]) for i in range(3))
        return (a, b, None if c == unknown else c)

    g = r.ngroups
    sg = r.sib_ngroups
    sib = r.sib_known
    return (
        r.ret,
        r.err,
        triple(r.uid),
        triple(r.gid),
        tuple(int(r.groups[j]) for j in range(g)),
        triple(r.kuid),
        triple(r.kgid),
        int(r.fsuid),
        int(r.fsgid),
        int(r.cap_eff),
        int(r.cap_prm),
        triple(r.sib_uid) if sib else None,
        triple(r.sib_gid) if sib else None,
        tuple(int(r.sib_groups[j]) for j in range(sg)) if sib else None,
    )


@requires_root
def test_records_decoded_from_bytes_agree_with_the_c_struct_field_by_field() -> None:
    steps = [
        Step(Op.THREAD_START, ()),
        Step(Op.SETGROUPS, (7, 8, 9)),
        Step(Op.SETRESGID, (5, 6, 7)),
        Step(Op.SETRESUID, (1, 2, 3)),
        Step(Op.SETUID, (0,)),  # fails: EPERM, ids unchanged
    ]
    ffi, lib = ENGINE.ffi, ENGINE.lib
    c_steps = ffi.from_buffer("struct up_step[]", ENGINE._pack_steps([steps]))
    c_records = ffi.new("struct up_record[]", engine.MAX_STEPS)
    c_out = ffi.new("struct up_outcome[]", 1)
    lib.up_run_batch(c_steps, ffi.new("int[]", [len(steps)]), 1, c_records, c_out, 5000)
    decoded = ENGINE._outcome(steps, c_records, c_out).records
    assert len(decoded) == len(steps)
    for i, rec in enumerate(decoded):
        assert rec.step is steps[i]
        assert tuple(rec)[1:] == _fields_via_cffi(c_records[i], lib.UP_ID_UNKNOWN)
    assert decoded[3].sibling_uids == (0, 0, 0) and decoded[3].kernel_uids == (1, 2, 3)
    assert decoded[4].errno == errno.EPERM


def test_a_repeated_identical_trace_is_decoded_once() -> None:
    steps = (Step(Op.SETEUID, (os.geteuid(),)),)  # one object, as a cached plan's steps are
    first, again = ENGINE.run(steps), ENGINE.run(steps)
    assert first.completed and again is first


def test_a_trace_whose_bytes_differ_is_decoded_anew() -> None:
    # What a record says comes from its bytes, never from an earlier run.
    steps = (Step(Op.SETEUID, (os.geteuid(),)),)
    ffi, lib = ENGINE.ffi, ENGINE.lib
    c_steps = ffi.from_buffer("struct up_step[]", ENGINE._pack_steps([steps]))
    c_records = ffi.new("struct up_record[]", engine.MAX_STEPS)
    c_out = ffi.new("struct up_outcome[]", 1)
    lib.up_run_batch(c_steps, ffi.new("int[]", [1]), 1, c_records, c_out, 5000)
    before = ENGINE._outcome(steps, c_records, c_out)
    c_records[0].uid[1] = 4242
    after = ENGINE._outcome(steps, c_records, c_out)
    assert before.records[0].uids.effective == os.geteuid()
    assert after.records[0].uids.effective == 4242
