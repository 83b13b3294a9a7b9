"""The safe-file rule holds against another user who races it, and every write as root is refused where unsafe.

The attackers are real processes: a small C program run as uid 1000 (setpriv)
that renames entries it prepared in and out of a name, as fast as it can,
while this (root) process loads the store or writes thousands of times.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import PRIVILEGED, ROOT, requires_cc, requires_root, run_cli, run_python
from uidprobe import cli, store, trust
from uidprobe.names import OBSERVED
from uidprobe.verdicts import Result

ATTACKER = 1000
#: A process whose ids are all 1000, without capabilities: it holds nothing beyond uid 1000.
AS_1000 = trust.Reader(uids=(ATTACKER,) * 3, gids=(ATTACKER,) * 3, caps=0)
AS_ATTACKER = ["setpriv", f"--reuid={ATTACKER}", f"--regid={ATTACKER}", "--clear-groups"]
LOADS = 5000
WRITES = 2000

requires_attacker = pytest.mark.skipif(
    not (PRIVILEGED and shutil.which("setpriv") and shutil.which("cc")),
    reason="needs root, setpriv and a C compiler (the attacker is a C program run as uid 1000)",
)

RACER_C = r"""
/* racer DIR NAME SECONDS ENTRY...: in DIR, rename each ENTRY onto NAME and
 * back, in turn, as fast as possible, until SIGTERM or SECONDS pass; then
 * print how many renames succeeded. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv) {
    if (argc < 5) return 64;
    if (chdir(argv[1]) != 0) { perror("chdir"); return 1; }
    signal(SIGTERM, on_signal);
    signal(SIGALRM, on_signal);
    alarm((unsigned)atoi(argv[3]));  /* a bound even if nobody stops us */
    unsigned long renames = 0;
    puts("ready");
    fflush(stdout);
    while (!stop)
        for (int i = 4; i < argc && !stop; i++) {
            renames += rename(argv[i], argv[2]) == 0;
            renames += rename(argv[2], argv[i]) == 0;
        }
    printf("%lu\n", renames);
    return 0;
}
"""


@pytest.fixture(scope="session")
def racer() -> Iterator[Path]:
    """The racer, built where uid 1000 can run it."""
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler")
    d = Path(tempfile.mkdtemp(prefix="uidprobe-racer-", dir="/tmp"))
    try:
        d.chmod(0o755)
        (d / "racer.c").write_text(RACER_C)
        subprocess.run(["cc", "-O2", "-o", str(d / "racer"), str(d / "racer.c")], check=True)
        yield d / "racer"
    finally:
        shutil.rmtree(d)


class Race:
    """A racer process; ``stop()`` ends it and returns how many renames it made."""

    def __init__(self, racer: Path, directory: Path, name: str, entries: list[str], *, as_attacker: bool) -> None:
        prefix = AS_ATTACKER if as_attacker else []
        self.proc = subprocess.Popen(
            [*prefix, str(racer), str(directory), name, "60", *entries],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        assert first == "ready\n", self.proc.communicate(timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        assert self.proc.returncode == 0, err
        return int(out)


def store_bytes(reason: str) -> bytes:
    return store.serialise({n: Result(n, True, reason) for n in OBSERVED})


@pytest.fixture
def playground() -> Iterator[Path]:
    """/tmp/X (root, 0755) with good/verdicts (root's genuine store), evil/ and
    evil/verdicts (the attacker's, forged), and pub/ (root's, sticky and
    world-writable like /tmp: where the attacker plants names)."""
    base = Path(tempfile.mkdtemp(prefix="uidprobe-trust-", dir="/tmp"))
    try:
        base.chmod(0o755)
        (base / "good").mkdir(mode=0o755)
        (base / "good" / "verdicts").write_bytes(store_bytes("genuine"))
        (base / "good" / "verdicts").chmod(0o644)
        (base / "evil").mkdir(mode=0o755)
        (base / "evil" / "verdicts").write_bytes(store_bytes("forged"))
        for p in (base / "evil", base / "evil" / "verdicts"):
            os.chown(p, ATTACKER, ATTACKER)
        (base / "pub").mkdir()
        (base / "pub").chmod(0o1777)
        yield base
    finally:
        shutil.rmtree(base)


def attacker_symlink(target: str, link: Path) -> None:
    link.symlink_to(target)
    os.lchown(link, ATTACKER, ATTACKER)


def load_many(path: Path, n: int = LOADS) -> Counter[str]:
    """How often each outcome came up: a valid load by its reason, else the reason's kind."""
    seen: Counter[str] = Counter()
    for _ in range(n):
        loaded = store.load(str(path))
        if loaded.results is not None:
            seen["valid " + loaded.results["USESETEUID"].reason] += 1
        else:
            seen[loaded.reason.split(":")[0]] += 1
    return seen


# ------------------------------------------------------------ racing readers


@requires_attacker
def test_an_attacker_flipping_a_symlink_between_the_genuine_and_a_forged_store_never_gets_a_forged_load(
    playground: Path, racer: Path
) -> None:
    pub = playground / "pub"
    attacker_symlink("../good/verdicts", pub / "to-good")
    attacker_symlink("../evil/verdicts", pub / "to-evil")
    race = Race(racer, pub, "store", ["to-good", "to-evil"], as_attacker=True)
    try:
        seen = load_many(pub / "store")
    finally:
        renames = race.stop()
    assert "valid forged" not in seen and renames > 0
    assert seen.keys() == {"absent", "unsafe"}, seen  # both sides of the race were met


@requires_attacker
def test_an_attacker_flipping_a_forged_file_in_and_out_of_existence_never_gets_it_loaded(
    playground: Path, racer: Path
) -> None:
    pub = playground / "pub"
    forged = pub / "forged"
    forged.write_bytes(store_bytes("forged"))
    forged.chmod(0o644)
    os.chown(forged, ATTACKER, ATTACKER)
    race = Race(racer, pub, "store", ["forged"], as_attacker=True)
    try:
        seen = load_many(pub / "store")
    finally:
        renames = race.stop()
    assert "valid forged" not in seen and renames > 0
    assert seen.keys() == {"absent", "unsafe"}, seen


@requires_attacker
def test_an_attacker_flipping_a_directory_component_never_gets_a_forged_load(playground: Path, racer: Path) -> None:
    pub = playground / "pub"
    os.rename(playground / "evil", pub / "evil-dir")  # still the attacker's, holding the forged store
    attacker_symlink("../good", pub / "to-good")
    race = Race(racer, pub, "d", ["evil-dir", "to-good"], as_attacker=True)
    try:
        seen = load_many(pub / "d" / "verdicts")
    finally:
        renames = race.stop()
    assert "valid forged" not in seen and renames > 0
    assert seen.keys() == {"absent", "unsafe"}, seen


@requires_root
def test_the_genuine_store_behind_a_root_owned_symlink_and_directory_link_is_trusted(playground: Path) -> None:
    (playground / "link-dir").symlink_to("good")
    (playground / "good" / "link").symlink_to("../good/verdicts")
    assert load_many(playground / "link-dir" / "link", 1) == {"valid genuine": 1}


# ------------------------------------------------- things that are not files


@pytest.fixture
def safe_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="uidprobe-trust-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


@pytest.fixture(params=["fifo", "/dev/zero", "directory", "socket", "/proc/kmsg"])
def not_a_store(request: pytest.FixtureRequest, safe_dir: Path) -> Iterator[tuple[str, str]]:
    """(path, the reason expected) for something at the store path that must never be read."""
    kind = request.param
    path = safe_dir / "verdicts"
    not_regular = f"invalid: {path} is not a regular file"
    if kind == "fifo":
        os.mkfifo(path, 0o644)
        yield str(path), not_regular
    elif kind == "directory":
        path.mkdir(mode=0o755)
        yield str(path), not_regular
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))
            s.listen()
            yield str(path), not_regular
    elif kind == "/dev/zero":
        yield kind, f"invalid: {kind} is not a regular file"
    else:  # /proc files are regular but report size 0: refused unread
        yield kind, "invalid: the file is empty"


def test_a_store_that_is_not_a_regular_file_is_rejected_at_once_without_a_read(not_a_store: tuple[str, str]) -> None:
    path, reason = not_a_store
    p = run_python(f"from uidprobe import store; print(store.load({path!r}).reason)", timeout=20)
    assert p.returncode == 0 and p.stdout == reason + "\n", p.stderr


def test_importing_config_with_a_store_that_is_not_a_regular_file_neither_hangs_nor_fails(
    not_a_store: tuple[str, str],
) -> None:
    path, reason = not_a_store
    code = "import uidprobe.config as c; print(c.SOURCE); print(c.REASON)"
    p = run_python(code, env={store.ENV_VAR: path}, timeout=60)
    assert p.returncode == 0, p.stderr
    source, why = p.stdout.splitlines()
    assert source in ("probe", "default") and f"store {reason}" in why


# ---------------------------------------------------------- whose files


@requires_root
def test_a_process_whose_uids_are_all_1000_trusts_roots_store(safe_dir: Path) -> None:
    path = safe_dir / "verdicts"
    path.write_bytes(store_bytes("genuine"))  # written by this root process: root's
    path.chmod(0o644)
    assert store.load(str(path), reader=AS_1000).valid


@requires_root
def test_a_process_whose_uids_are_all_1000_trusts_a_store_that_uid_1000_owns(safe_dir: Path) -> None:
    path = safe_dir / "verdicts"
    path.write_bytes(store_bytes("genuine"))
    path.chmod(0o644)
    os.chown(path, ATTACKER, ATTACKER)
    os.chown(safe_dir, ATTACKER, ATTACKER)
    assert store.load(str(path), reader=AS_1000).valid
    assert store.load(str(path)).reason == f"unsafe: directory {safe_dir} is owned by uid {ATTACKER}, not root"


def test_a_symlink_loop_is_refused_after_a_bounded_number_of_links(safe_dir: Path) -> None:
    (safe_dir / "a").symlink_to("b")
    (safe_dir / "b").symlink_to("a")
    reason = store.load(str(safe_dir / "a")).reason
    assert reason == f"unsafe: {safe_dir}/a: more than {trust.MAX_SYMLINKS} symbolic links"


def test_dot_dot_after_a_symlink_means_the_parent_of_its_target(safe_dir: Path) -> None:
    (safe_dir / "real" / "sub").mkdir(parents=True, mode=0o755)
    (safe_dir / "real" / "verdicts").write_bytes(store_bytes("genuine"))
    (safe_dir / "real" / "verdicts").chmod(0o644)
    (safe_dir / "link").symlink_to("real/sub")
    assert store.load(str(safe_dir / "link" / ".." / "verdicts")).valid  # as the kernel resolves it


@requires_root
@pytest.mark.parametrize("uids", [(0, ATTACKER, 0), (ATTACKER, ATTACKER, 0), (0, ATTACKER, ATTACKER)])
def test_a_store_owned_by_uid_1000_is_not_trusted_by_a_process_that_can_become_root_again(
    safe_dir: Path, uids: tuple[int, int, int]
) -> None:
    path = safe_dir / "verdicts"
    path.write_bytes(store_bytes("from uid 1000"))
    path.chmod(0o644)
    os.chown(path, ATTACKER, ATTACKER)
    code = (
        "import os, sys\n"
        "from uidprobe import store\n"  # imported before the switch: the interpreter may live under /root
        f"os.setresuid(*{uids!r})\n"
        f"print(store.load({str(path)!r}).reason)\n"
    )
    p = run_python(code, timeout=20)
    assert p.returncode == 0, p.stderr
    r, e, s = uids
    assert p.stdout == (
        f"unsafe: {path} is owned by uid {ATTACKER}, not root "
        f"(real, effective and saved uids {r}, {e}, {s} differ: only root's files are trusted)\n"
    )


@requires_root
@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="needs Debian's /usr/bin/python3")
def test_a_store_owned_by_uid_1000_is_trusted_by_a_process_that_is_uid_1000_throughout(safe_dir: Path) -> None:
    path = safe_dir / "verdicts"
    path.write_bytes(store_bytes("from uid 1000"))
    path.chmod(0o644)
    os.chown(path, ATTACKER, ATTACKER)
    code = f"import os; from uidprobe import store; print(os.getresuid(), store.load({str(path)!r}).reason)"
    p = subprocess.run(
        [*AS_ATTACKER, "/usr/bin/python3", "-c", code],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"({ATTACKER}, {ATTACKER}, {ATTACKER}) valid\n"


# ------------------------------------------------------------------ writing

VICTIM = b"root's file, which nobody else may make root overwrite\n"


@pytest.fixture
def victim(playground: Path) -> Path:
    v = playground / "good" / "victim"
    v.write_bytes(VICTIM)
    v.chmod(0o644)
    return v


def unsafe_destination(kind: str, playground: Path, victim: Path) -> tuple[Path, str]:
    """A destination that must be refused, and the one line naming why."""
    pub = playground / "pub"
    if kind == "symlinked name":
        attacker_symlink(str(victim), pub / "out")
        return pub / "out", f"{pub}/out is a symbolic link: refusing to replace it"
    if kind == "root's symlinked name":
        (playground / "good" / "out").symlink_to(victim)
        return playground / "good" / "out", f"{playground}/good/out is a symbolic link: refusing to replace it"
    if kind == "symlinked directory":
        attacker_symlink(str(victim.parent), pub / "d")
        why = f"symbolic link {pub}/d is owned by uid {ATTACKER}, not root"
        return pub / "d" / victim.name, why
    assert kind == "group-writable directory"
    victim.parent.chmod(0o775)
    return victim, f"directory {victim.parent} is writable by group (mode 0775)"


DESTINATIONS = ["symlinked name", "root's symlinked name", "symlinked directory", "group-writable directory"]


@requires_root
@pytest.mark.parametrize("kind", DESTINATIONS)
@pytest.mark.parametrize("command", [["configure", "--store"], ["model", "-o"]])
def test_configure_and_model_refuse_an_unsafe_destination_with_73_and_leave_the_victim_alone(
    playground: Path, victim: Path, kind: str, command: list[str]
) -> None:
    dest, why = unsafe_destination(kind, playground, victim)
    p = run_cli(*command, str(dest))
    assert (p.returncode, p.stderr, p.stdout) == (cli.EX_CANTCREAT, f"uidprobe: cannot write {dest}: {why}\n", "")
    assert victim.read_bytes() == VICTIM


@requires_root
def test_model_with_output_dash_writes_standard_output_and_no_file(safe_dir: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "uidprobe", "model", "-o", "-"],
        cwd=safe_dir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert p.returncode == 0 and p.stdout.startswith("uid model: 27 states, 2376 transitions"), p.stderr
    assert list(safe_dir.iterdir()) == []


def test_write_atomic_replaces_a_regular_file_and_leaves_no_temporary(safe_dir: Path) -> None:
    path = safe_dir / "out"
    path.write_bytes(b"old")
    trust.write_atomic(str(path), b"new", 0o640)
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in safe_dir.iterdir()] == ["out"]


def test_write_atomic_into_a_missing_directory_is_refused_unless_asked_to_create_it(safe_dir: Path) -> None:
    path = safe_dir / "a" / "out"
    with pytest.raises(trust.WriteError, match=f"^directory {safe_dir}/a does not exist$"):
        trust.write_atomic(str(path), b"x")
    trust.write_atomic(str(path), b"x", make_dirs=True)
    assert path.read_bytes() == b"x"


@requires_attacker
def test_an_attacker_flipping_a_directory_component_never_makes_root_write_elsewhere(
    playground: Path, victim: Path, racer: Path
) -> None:
    pub = playground / "pub"
    os.rename(playground / "evil", pub / "evil-dir")
    attacker_symlink(str(victim.parent), pub / "to-good")
    race = Race(racer, pub, "d", ["evil-dir", "to-good"], as_attacker=True)
    refusals: Counter[str] = Counter()
    try:
        for _ in range(WRITES):
            try:
                trust.write_atomic(str(pub / "d" / "victim"), b"pwned\n")
            except trust.WriteError as e:
                refusals[str(e).split(" ")[0]] += 1
    finally:
        renames = race.stop()
    assert sum(refusals.values()) == WRITES and renames > 0
    assert len(refusals) >= 2, refusals  # "directory ... does not exist" and "symbolic link / directory ... owned by"
    assert victim.read_bytes() == VICTIM
    assert sorted(p.name for p in (pub / "evil-dir").iterdir()) == ["verdicts"]


WRITER = """
import sys
from collections import Counter
from uidprobe import trust
path, n = sys.argv[1], int(sys.argv[2])
seen = Counter()
for i in range(n):
    try:
        trust.write_atomic(path, b"write %d\\n" % i)
        seen["ok"] += 1
    except trust.WriteError as e:
        assert "\\n" not in str(e)
        seen["refused"] += 1
print(seen["ok"], seen["refused"])
"""


@requires_root
@requires_cc
def test_a_directory_swapped_for_a_fifo_during_writes_gets_the_file_where_it_was_checked_or_a_refusal(
    safe_dir: Path, racer: Path
) -> None:
    (safe_dir / "real").mkdir(mode=0o755)
    os.mkfifo(safe_dir / "fifo", 0o644)
    race = Race(racer, safe_dir, "d", ["real", "fifo"], as_attacker=False)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", WRITER, str(safe_dir / "d" / "out"), str(WRITES)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        race.stop()
    assert proc.returncode == 0, proc.stderr
    ok, refused = map(int, proc.stdout.split())
    assert ok > 0 and refused > 0 and ok + refused == WRITES
    assert sorted(p.name for p in safe_dir.iterdir()) == ["fifo", "real"]
    assert (safe_dir / "fifo").is_fifo()
    assert [p.name for p in (safe_dir / "real").iterdir()] == ["out"]
    assert (safe_dir / "real" / "out").read_bytes().startswith(b"write ")


@requires_root
@requires_cc
def test_configure_while_its_directory_is_swapped_writes_there_or_exits_73_in_one_line(
    safe_dir: Path, racer: Path
) -> None:
    (safe_dir / "real").mkdir(mode=0o755)
    os.mkfifo(safe_dir / "fifo", 0o644)
    race = Race(racer, safe_dir, "d", ["real", "fifo"], as_attacker=False)
    try:
        runs = [run_cli("configure", "--store", str(safe_dir / "d" / "verdicts")) for _ in range(5)]
    finally:
        race.stop()
    for p in runs:
        assert p.returncode in (cli.EX_OK, cli.EX_CANTCREAT) and "Traceback" not in p.stderr
        assert p.returncode == cli.EX_OK or (p.stderr.count("\n") == 1 and p.stderr.startswith("uidprobe: cannot"))
    # configure creates a missing directory: while the racer had "d" renamed away it may have made its own.
    names = sorted(p.name for p in safe_dir.iterdir())
    assert names in (["fifo", "real"], ["d", "fifo", "real"]) and (safe_dir / "fifo").is_fifo()
    written = [f for d in names if d != "fifo" for f in (safe_dir / d).iterdir()]
    assert all(f.name == "verdicts" and store.load(str(f)).valid for f in written)
