"""Per-thread identity: the THREAD_CREDENTIALS probe gives 1 here, is
undetermined where it cannot test, and 0 on a platform whose per-thread call
changes every thread (a test build of the engine that makes it do so)."""

from __future__ import annotations

import importlib.util
import json
import warnings
from types import ModuleType

import pytest

from helpers import ROOT, requires_cc, requires_root, requires_thread_ops, requires_tools, run_python
from uidprobe import suite
from uidprobe.creds import Expect, SwitchPlan
from uidprobe.engine import Engine, Op, Step, default_engine

NAME = "THREAD_CREDENTIALS"


def build_variant(tmp: str, name: str, macros: tuple[tuple[str, str], ...]) -> ModuleType:
    """The engine rebuilt with test-only macros, loaded as module ``name``."""
    spec = importlib.util.spec_from_file_location("build_engine", ROOT / "src" / "build_engine.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    builder = build.make_builder(name, root=str(ROOT), extra_macros=macros)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setuptools' own deprecation chatter
        path = builder.compile(tmpdir=tmp)
    mspec = importlib.util.spec_from_file_location(name, path)
    assert mspec and mspec.loader
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def broadcasting_engine(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """An engine whose per-thread calls also change the other thread, as the C
    library's wrappers do (UP_FAULT_THREAD_BROADCAST_BUILD, csrc/steps.c)."""
    tmp = str(tmp_path_factory.mktemp("broadcast"))
    return build_variant(tmp, "_engine_broadcast", (("UP_FAULT_THREAD_BROADCAST_BUILD", "1"),))


@requires_root
@requires_thread_ops
def test_thread_credentials_is_1_with_evidence_from_both_threads() -> None:
    r = suite.run([NAME], uids=(1, 2, 3), gids=(1, 2, 3))[NAME]
    assert r.verdict is True, r.reason
    checks = [t for t in r.trace if t.step.op.per_thread and t.role.value == "check"]
    assert [str(t.step) for t in checks] == [
        "SYS_setgroups([2])",
        "SYS_setresgid(-1, 2, -1)",
        "SYS_setresuid(-1, 2, -1)",
        "SYS_setresuid(-1, 0, -1)",
        "SYS_setresgid(-1, 0, -1)",
        "SYS_setgroups([1])",
    ]
    switched = checks[2].record
    assert switched is not None
    # The switching thread holds uid 2 while the other still reads root.
    assert switched.kernel_uids == (1, 2, 0) and switched.groups == (2,)
    assert switched.sibling_uids == (1, 0, 0) and switched.sibling_gids == (1, 0, 0)
    assert switched.sibling_groups == (1,)
    back = checks[-1].record
    assert back is not None and back.kernel_uids == (1, 0, 0) and back.kernel_gids == (1, 0, 0)


@requires_root
@requires_tools
def test_thread_credentials_is_undetermined_without_privilege() -> None:
    code = f"import json, uidprobe; r = uidprobe.probe({NAME!r}); print(json.dumps([r.verdict, r.reason]))"
    proc = run_python(code, prefix=["setpriv", "--inh-caps=-setuid,-setgid", "--bounding-set=-setuid,-setgid"])
    verdict, reason = json.loads(proc.stdout)
    assert verdict is None
    assert "runs as root but without CAP_SETUID" in reason


@requires_cc
@requires_root
@requires_thread_ops
def test_thread_credentials_is_0_when_the_per_thread_call_changes_every_thread(
    broadcasting_engine: ModuleType,
) -> None:
    eng = Engine(broadcasting_engine)
    assert eng.lib.up_features() & eng.lib.UP_FAULT_THREAD_BROADCAST
    r = suite.run([NAME], uids=(1, 2, 3), gids=(1, 2, 3), engine=eng)[NAME]
    assert r.verdict is False
    assert r.reason == "after SYS_setgroups([2]): in the other thread, groups are (2,), should be [1]"


@requires_cc
@requires_root
@requires_thread_ops
def test_the_broadcasting_build_changes_nothing_else(broadcasting_engine: ModuleType) -> None:
    results = suite.run(engine=Engine(broadcasting_engine))
    assert {n: r.verdict for n, r in results.items()} == {**dict.fromkeys(suite.NAMES, True), NAME: False}


def test_an_in_process_switch_refuses_to_start_a_thread() -> None:
    with pytest.raises(ValueError, match="refused its input"):
        SwitchPlan([(Step(Op.THREAD_START, ()), Expect())], []).run()


@requires_root
@requires_thread_ops
def test_a_child_reads_the_second_thread_back_after_every_step_through_both_transports() -> None:
    steps = [Step(Op.THREAD_START, ()), Step(Op.THREAD_SETRESUID, (-1, 7, -1)), Step(Op.THREAD_SETRESUID, (-1, 0, -1))]
    for via in ("spawn", "fork"):
        out = default_engine().run(steps, via=via)
        assert out.completed
        assert [r.kernel_uids for r in out.records] == [(0, 0, 0), (0, 7, 0), (0, 0, 0)]
        assert [r.sibling_uids for r in out.records] == [(0, 0, 0)] * 3
