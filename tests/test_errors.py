"""One error family: every error uidprobe raises is a UidprobeError, exported
from the package, and the builtin kind a caller would already catch."""

from __future__ import annotations

import pytest

import uidprobe
from uidprobe import engine, model, privileges, store, trust

BUILTIN_KIND = {
    "UsageError": ValueError,
    "EngineError": OSError,
    "WriteError": OSError,
    "StoreError": OSError,
    "ModelError": ValueError,
    "InvalidTargetError": ValueError,
}


@pytest.mark.parametrize("name", [n for n in uidprobe.__all__ if n.endswith("Error")])
def test_every_exported_error_is_a_uidprobe_error(name: str) -> None:
    assert issubclass(getattr(uidprobe, name), uidprobe.UidprobeError)


@pytest.mark.parametrize(("name", "kind"), sorted(BUILTIN_KIND.items()))
def test_errors_keep_the_builtin_kind_callers_already_catch(name: str, kind: type) -> None:
    assert issubclass(getattr(uidprobe, name), kind)


def test_the_modules_raise_the_exported_classes() -> None:
    assert engine.EngineError is uidprobe.EngineError
    assert store.StoreError is uidprobe.StoreError and trust.WriteError is uidprobe.WriteError
    assert model.ModelError is uidprobe.ModelError
    assert privileges.VerificationError is uidprobe.VerificationError


def test_a_refused_write_is_caught_as_a_uidprobe_error() -> None:
    with pytest.raises(uidprobe.UidprobeError, match=r"is not a directory|does not exist"):
        store.save("/proc/self/status/verdicts", {})
