"""The store: written atomically, trusted only when safe and current."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import NOBODY, requires_root
from uidprobe import store
from uidprobe.names import OBSERVED
from uidprobe.verdicts import Result


def results(verdict: bool | None = True) -> dict[str, Result]:
    return {n: Result(n, verdict, f"reason for {n}") for n in OBSERVED}


@pytest.fixture
def safe_dir(tmp_path: Path) -> Path:
    d = tmp_path / "store"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    # pytest's own directories are 0700 and ours: safe all the way up to /tmp (root's, sticky).
    return d


@pytest.fixture
def saved(safe_dir: Path) -> Path:
    path = safe_dir / "verdicts"
    store.save(str(path), results())
    return path


def replace_line(path: Path, prefix: str, new: str | None) -> None:
    """Replace (or with None, drop) the store line that starts with ``prefix``."""
    lines = path.read_text().split("\n")
    index = next(i for i, line in enumerate(lines) if line.startswith(prefix))
    if new is None:
        del lines[index]
    else:
        lines[index] = new
    path.write_text("\n".join(lines))


def test_a_saved_store_loads_back_as_valid(saved: Path) -> None:
    loaded = store.load(str(saved))
    assert loaded.valid and loaded.reason == "valid"
    assert loaded.results is not None and {n: r.value for n, r in loaded.results.items()} == dict.fromkeys(OBSERVED, 1)


def test_save_writes_mode_0644_and_leaves_no_temporary_file(saved: Path) -> None:
    assert saved.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in saved.parent.iterdir()) == ["verdicts"]


def test_save_creates_missing_directories_0755(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "verdicts"
    store.save(str(path), results())
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o755


def test_save_to_an_impossible_path_raises_store_error() -> None:
    with pytest.raises(store.StoreError, match="cannot create directory /proc/1/nonexistent"):
        store.save("/proc/1/nonexistent/verdicts", results())


def test_fingerprint_names_kernel_libc_machine_and_versions() -> None:
    fp = store.current_fingerprint()
    assert set(fp) == {"format", "kernel_release", "kernel_version", "libc", "machine", "system", "uidprobe"}
    assert fp["kernel_release"] == os.uname().release
    import platform

    name, version = platform.libc_ver()  # an independent way to ask: it reads the executable
    assert fp["libc"].split() == [name, version] or fp["libc"] == f"{name} {version}".strip()


def test_absent_store_is_reported_as_absent(safe_dir: Path) -> None:
    loaded = store.load(str(safe_dir / "none.json"))
    assert not loaded.valid and loaded.reason.startswith("absent:")


def test_default_path_follows_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(store.ENV_VAR, "/x/y.json")
    assert store.default_path() == "/x/y.json"
    monkeypatch.delenv(store.ENV_VAR)
    assert store.default_path() == "/var/lib/uidprobe/verdicts"


# ---------------------------------------------------------- unsafe locations


@pytest.mark.parametrize(("mode", "phrase"), [(0o664, "writable by group"), (0o646, "writable by others")])
def test_file_writable_by_others_is_ignored(saved: Path, mode: int, phrase: str) -> None:
    saved.chmod(mode)
    loaded = store.load(str(saved))
    assert not loaded.valid and loaded.reason == f"unsafe: {saved} is {phrase} (mode {mode:04o})"


@requires_root
def test_file_owned_by_another_user_is_ignored(saved: Path) -> None:
    os.chown(saved, NOBODY, NOBODY)
    assert store.load(str(saved)).reason == f"unsafe: {saved} is owned by uid {NOBODY}, not root"


@pytest.mark.parametrize(("mode", "phrase"), [(0o775, "writable by group"), (0o757, "writable by others")])
def test_directory_writable_by_others_is_ignored(saved: Path, mode: int, phrase: str) -> None:
    saved.parent.chmod(mode)
    reason = store.load(str(saved)).reason
    assert reason == f"unsafe: directory {saved.parent} is {phrase} (mode {mode:04o})"


@requires_root
def test_directory_owned_by_another_user_is_ignored(saved: Path) -> None:
    os.chown(saved.parent, NOBODY, NOBODY)
    assert f"directory {saved.parent} is owned by uid {NOBODY}" in store.load(str(saved)).reason


@requires_root
def test_sticky_world_writable_directory_owned_by_root_is_accepted(saved: Path) -> None:
    saved.parent.chmod(0o1777)
    assert store.load(str(saved)).valid


@requires_root
def test_sticky_world_writable_directory_owned_by_someone_else_is_ignored(saved: Path) -> None:
    saved.parent.chmod(0o1777)
    os.chown(saved.parent, NOBODY, NOBODY)
    assert not store.load(str(saved)).valid


def test_symlink_into_an_unsafe_directory_is_judged_by_its_target(saved: Path, tmp_path: Path) -> None:
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    unsafe.chmod(0o777)
    target = unsafe / "v.json"
    target.write_bytes(saved.read_bytes())
    target.chmod(0o644)
    link = saved.parent / "link.json"
    link.symlink_to(target)
    assert "writable by others" in store.load(str(link)).reason


def test_a_directory_in_place_of_the_file_is_ignored(safe_dir: Path) -> None:
    (safe_dir / "verdicts").mkdir()
    assert "not a regular file" in store.load(str(safe_dir / "verdicts")).reason


@requires_root
def test_environment_variable_cannot_feed_an_unsafe_store_to_root(saved: Path) -> None:
    saved.parent.chmod(0o777)
    env = {**os.environ, store.ENV_VAR: str(saved)}
    code = "from uidprobe import config; print(config.SOURCE, config.REASON)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert not out.stdout.startswith("store")
    assert "unsafe: directory" in out.stdout


# ------------------------------------------------------------ bad contents


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (b"", "the file is empty"),
        (b"   \n", "the file is empty"),
        (b'{"created": 1, "fingerprint": {', "not a uidprobe store"),
        (b"\xff\xfe garbage", "not UTF-8"),
        (b"[1, 2, 3]", "not a uidprobe store"),
        (b"uidprobe-store 2\nend\n", "format '2' is not 1"),
        (b"uidprobe-store 1\ncreated 1\n", "no end line"),
        (b"uidprobe-store 1\nend\n", "no created line"),
        (b"uidprobe-store 1\nx\nend\n", "unknown record 'x'"),
        (b"uidprobe-store 1\nfingerprint a 1\nend\n", "no created line"),
        (b"uidprobe-store 1\ncreated nan\nend\n", "not a finite number"),
        (b"uidprobe-store 1\ncreated soon\nend\n", "created is not a number"),
    ],
)
def test_damaged_store_is_ignored_with_a_reason(safe_dir: Path, content: bytes, phrase: str) -> None:
    path = safe_dir / "verdicts"
    path.write_bytes(content)
    path.chmod(0o644)
    loaded = store.load(str(path))
    assert not loaded.valid and phrase in loaded.reason


def test_truncated_store_is_ignored(saved: Path) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    assert store.load(str(saved)).reason == "invalid: no end line (truncated?)"


def test_oversized_store_is_ignored_without_parsing(saved: Path) -> None:
    saved.write_bytes(b" " * (store.MAX_BYTES + 10))
    assert "larger than" in store.load(str(saved)).reason


R = "result USESETEUID "


@pytest.mark.parametrize(
    ("prefix", "new", "phrase"),
    [
        (R, R + "yes 1 r", "USESETEUID: verdict must be true, false or none"),
        (R, R + "false 1 r", "value '1' does not match verdict false"),
        (R, R + "none 1 r", "value '1' does not match verdict none"),
        (R, R + "true True r", "value 'True' does not match verdict true"),
        (R, R + "true 1", "needs a name, verdict, value and reason"),
        (R, R + "true 1 bad \\q escape", "bad escape"),
        (R, "result NOPE true 1 r", "unknown or repeated result 'NOPE'"),
        ("result HASSETREUID ", R + "true 1 again", "unknown or repeated result 'USESETEUID'"),
        ("result HASSETREUID ", None, "no result for HASSETREUID"),
        ("fingerprint libc ", "fingerprint machine x", "missing or repeated fingerprint key"),
    ],
)
def test_wrong_typed_store_is_ignored(saved: Path, prefix: str, new: str | None, phrase: str) -> None:
    replace_line(saved, prefix, new)
    loaded = store.load(str(saved))
    assert not loaded.valid and phrase in loaded.reason


def test_reasons_with_newlines_and_backslashes_survive_a_round_trip(safe_dir: Path) -> None:
    path = safe_dir / "verdicts"
    odd = "two\nlines \\ and\r a CR"
    store.save(str(path), {n: Result(n, True, odd) for n in OBSERVED})
    loaded = store.load(str(path))
    assert loaded.results is not None and loaded.results["USESETEUID"].reason == odd


@pytest.mark.parametrize("key", ["kernel_release", "kernel_version", "libc", "machine", "uidprobe", "format"])
def test_store_from_another_kernel_or_libc_is_stale(saved: Path, key: str) -> None:
    replace_line(saved, f"fingerprint {key} ", f"fingerprint {key} something else")
    loaded = store.load(str(saved))
    assert not loaded.valid and loaded.reason.startswith(f"stale: {key} is")
    assert loaded.fingerprint is not None  # shown by 'show' even when stale


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=json_values)
def test_fuzzed_json_never_raises_and_is_never_trusted(safe_dir: Path, doc: Any) -> None:
    path = safe_dir / "fuzz.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o644)
    assert not store.load(str(path)).valid


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=256))
def test_fuzzed_bytes_never_raise(safe_dir: Path, data: bytes) -> None:
    path = safe_dir / "fuzz.json"
    path.write_bytes(data)
    path.chmod(0o644)
    assert not store.load(str(path)).valid


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(min_value=0, max_value=200), junk=st.text(max_size=60))
def test_a_fuzzed_line_never_raises_and_never_yields_a_1_without_a_true_verdict(
    saved: Path, index: int, junk: str
) -> None:
    original = saved.read_bytes()
    try:
        lines = original.decode().split("\n")
        lines[index % len(lines)] = junk
        saved.write_text("\n".join(lines))
        loaded = store.load(str(saved))
        if loaded.results is not None:
            assert all(r.value == (1 if r.verdict is True else 0) for r in loaded.results.values())
    finally:
        saved.write_bytes(original)


# ------------------------------------------------------------- concurrency

WRITER = """
import sys
from uidprobe import store
from uidprobe.names import OBSERVED
from uidprobe.verdicts import Result
path, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    v = bool(i % 2)
    store.save(path, {k: Result(k, v, "round %d" % i) for k in OBSERVED})
"""

READER = """
import sys
from uidprobe import store
path, n = sys.argv[1], int(sys.argv[2])
bad = []
for _ in range(n):
    r = store.load(path)
    if not r.valid:
        bad.append(r.reason)
    else:
        vals = {x.value for x in r.results.values()}
        if len(vals) != 1:
            bad.append("mixed store: %r" % vals)
print(len(bad)); print("\\n".join(bad[:3]))
"""


def test_concurrent_writers_and_readers_never_see_a_partial_store(saved: Path) -> None:
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(saved), "40"]) for _ in range(3)]
    readers = [
        subprocess.Popen([sys.executable, "-c", READER, str(saved), "400"], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for w in writers:
        assert w.wait(timeout=120) == 0
    for r in readers:
        out, _ = r.communicate(timeout=120)
        count, *examples = out.splitlines()
        assert count == "0", examples
    assert store.load(str(saved)).valid
    assert [p.name for p in saved.parent.iterdir()] == ["verdicts"]
