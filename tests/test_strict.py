"""Strict builds and honest exit codes (#14 item 3), and the contrib/ units
that run ``configure --if-stale``."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, requires_cc, requires_root, requires_tools, requires_userns, run_cli, run_python
from uidprobe import cli, store
from uidprobe.names import OBSERVED
from uidprobe.verdicts import Result

UNSHARE = ["unshare", "-U"]  # a user namespace without id maps: cannot probe
UIDPROBE = str(Path(sys.executable).parent / "uidprobe")


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    return tmp_path


def stored(path: Path, verdicts: dict[str, bool | None] | None = None) -> Path:
    verdicts = verdicts or {}
    store.save(str(path), {n: Result(n, verdicts.get(n, True), f"test says {n}") for n in OBSERVED})
    return path


def make_stale(path: Path) -> None:
    release = store.current_fingerprint()["kernel_release"]
    text = path.read_text().replace(f"fingerprint kernel_release {release}\n", "fingerprint kernel_release 2.0.36\n")
    path.write_text(text)


# ------------------------------------------------------------ export --strict


def test_export_strict_without_measured_values_exits_2_with_one_line(store_dir: Path) -> None:
    p = run_cli("export", "cflags", "--strict", "--no-probe", "--store", str(store_dir / "none"))
    assert p.returncode == cli.EX_INCOMPLETE and p.stdout == ""
    assert p.stderr.count("\n") == 1
    assert p.stderr.startswith("uidprobe: strict: no measured values, only defaults: store absent")


def test_export_of_defaults_warns_with_one_line_and_still_exports(store_dir: Path) -> None:
    p = run_cli("export", "shell", "--no-probe", "--store", str(store_dir / "none"))
    assert p.returncode == 0 and p.stdout == "".join(f"{n}=0\n" for n in OBSERVED)
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("uidprobe: warning: exporting defaults (every value 0)")


def test_export_strict_with_a_valid_store_is_silent(store_dir: Path) -> None:
    path = stored(store_dir / "v")
    p = run_cli("export", "cflags", "--strict", "--store", str(path))
    assert (p.returncode, p.stderr) == (0, "") and "-DUSESETEUID=1" in p.stdout


# ------------------------------------------------------------ define_macros

STRICT_CODE = (
    "import uidprobe\n"
    "try:\n"
    "    uidprobe.define_macros(strict=True)\n"
    "except uidprobe.errors.UidprobeError as e:\n"
    "    print('raised:', e)\n"
    "import warnings\n"
    "with warnings.catch_warnings(record=True) as w:\n"
    "    warnings.simplefilter('always')\n"
    "    print('macros:', uidprobe.define_macros())\n"
    "print('warned:', [str(x.message) for x in w if x.category is UserWarning])\n"
)


@requires_tools
@requires_userns
def test_define_macros_strict_raises_without_measured_values_and_warns_otherwise(store_dir: Path) -> None:
    p = run_python(STRICT_CODE, env={store.ENV_VAR: str(store_dir / "none")}, prefix=UNSHARE)
    assert p.returncode == 0, p.stderr
    raised, macros, warned = p.stdout.splitlines()
    assert raised.startswith("raised: uidprobe: strict: no measured values, only defaults: store ")
    assert "cannot probe" in raised
    assert macros == "macros: []"
    assert "every value is 0 (defaults, not measured): store " in warned
    assert warned.count("every value is 0") == 1  # said once, not repeated by the reason


DOWNSTREAM_SETUP = """
import uidprobe
from setuptools import Extension, setup

setup(
    name="downstream",
    version="0",
    ext_modules=[Extension("downstream", ["downstream.c"], define_macros=uidprobe.define_macros(strict={strict}))],
)
"""


def build_downstream_as_nobody(strict: bool) -> subprocess.CompletedProcess[str]:
    """A downstream setuptools build, as nobody, with no store: what a
    package build in a clean chroot does.  Debian's python (pyenv's cannot
    start as another user) with this installation of uidprobe."""
    import shutil
    import tempfile

    import uidprobe

    system = "/usr/bin/python3"
    site = str(Path(uidprobe.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": site, store.ENV_VAR: "/nonexistent/verdicts"}
    env.pop("UIDPROBE_STRICT", None)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    check = subprocess.run(
        [*nobody, system, "-c", "import setuptools, uidprobe.config"], env=env, capture_output=True, check=False
    )
    if not os.access(system, os.X_OK) or check.returncode != 0 or shutil.which("cc") is None:
        pytest.skip(f"nobody cannot build with {system}, setuptools, cc and uidprobe from {site}")
    work = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        work.chmod(0o777)
        (work / "setup.py").write_text(DOWNSTREAM_SETUP.format(strict=strict))
        (work / "downstream.c").write_text("int downstream_answer(void) { return 42; }\n")
        return subprocess.run(
            [*nobody, system, "setup.py", "-q", "build_ext", "--build-lib", "out", "--build-temp", "tmp"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        shutil.rmtree(work)


@requires_root
def test_a_downstream_build_as_nobody_without_a_store_fails_in_strict_mode_with_one_clear_line() -> None:
    p = build_downstream_as_nobody(strict=True)
    assert p.returncode != 0
    assert p.stderr.splitlines()[-1].startswith(
        "uidprobe.errors.UidprobeError: uidprobe: strict: no measured values, only defaults: store absent"
    )


@requires_root
def test_a_downstream_build_as_nobody_without_a_store_warns_and_builds_otherwise() -> None:
    p = build_downstream_as_nobody(strict=False)
    assert p.returncode == 0, p.stderr
    assert "every value is 0 (defaults, not measured)" in p.stderr


@requires_tools
@requires_userns
def test_uidprobe_strict_in_the_environment_makes_define_macros_strict(store_dir: Path) -> None:
    code = "import uidprobe\nuidprobe.define_macros()\n"
    p = run_python(code, env={store.ENV_VAR: str(store_dir / "none"), "UIDPROBE_STRICT": "1"}, prefix=UNSHARE)
    assert p.returncode == 1 and "UidprobeError: uidprobe: strict: no measured values" in p.stderr


def test_define_macros_strict_with_a_valid_store_returns_the_values(store_dir: Path) -> None:
    path = stored(store_dir / "v", {"HASSETREUID": False})
    code = "import uidprobe\nprint(uidprobe.define_macros(strict=True))\n"
    p = run_python(code, env={store.ENV_VAR: str(path)})
    assert p.returncode == 0 and p.stderr == ""
    assert "('USESETEUID', '1')" in p.stdout and "HASSETREUID" not in p.stdout


# ------------------------------------------------------------ exit codes


def test_show_exits_0_only_for_a_valid_current_store(store_dir: Path) -> None:
    path = stored(store_dir / "v")
    assert run_cli("show", "--store", str(path)).returncode == cli.EX_OK
    assert run_cli("show", "--store", str(store_dir / "absent")).returncode == cli.EX_NOSTORE
    make_stale(path)
    assert run_cli("show", "--store", str(path)).returncode == cli.EX_NOSTORE
    assert run_cli("show", "--json", "--store", str(path)).returncode == cli.EX_NOSTORE
    (store_dir / "bad").write_text("garbage\n")
    assert run_cli("show", "--store", str(store_dir / "bad")).returncode == cli.EX_NOSTORE
    good = stored(store_dir / "good")
    store_dir.chmod(0o775)  # unsafe
    assert run_cli("show", "--store", str(good)).returncode == cli.EX_NOSTORE


@requires_tools
@requires_userns
def test_probe_exits_2_when_every_verdict_is_undetermined(store_dir: Path) -> None:
    p = run_cli("--json", prefix=UNSHARE)
    assert p.returncode == cli.EX_UNDETERMINED
    assert "every verdict is undetermined" in p.stderr


def test_export_to_a_full_device_exits_74_with_one_line(store_dir: Path) -> None:
    path = stored(store_dir / "v")
    with open("/dev/full", "w") as full:
        p = subprocess.run(
            [UIDPROBE, "export", "config-h", "--store", str(path)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    assert p.returncode == cli.EX_IOERR
    assert p.stderr == "uidprobe: cannot write standard output: No space left on device\n"


# ------------------------------------------------------------ config-h --explicit


def test_config_h_explicit_defines_every_name_with_its_verdict_and_reason(store_dir: Path) -> None:
    path = stored(store_dir / "v", {"USESETEUID": False, "HASSETREUID": None})
    header = run_cli("export", "config-h", "--explicit", "--store", str(path)).stdout
    assert "/* USESETEUID: no: test says USESETEUID */\n#define USESETEUID 0\n" in header
    assert "/* HASSETREUID: undetermined: test says HASSETREUID */\n#define HASSETREUID 0\n" in header
    assert "/* SETUID_PERMANENT: yes: test says SETUID_PERMANENT */\n#define SETUID_PERMANENT 1\n" in header
    assert len(re.findall(r"^#define \w+ [01]$", header, re.M)) == len(OBSERVED)


@requires_cc
def test_an_explicit_no_beats_a_sendmail_style_default(tmp_path: Path, store_dir: Path) -> None:
    path = stored(store_dir / "v", {"USESETEUID": False})
    header = run_cli("export", "config-h", "--explicit", "--store", str(path)).stdout
    (tmp_path / "uidprobe_config.h").write_text(header)
    (tmp_path / "prog.c").write_text(
        '#include <stdio.h>\n#include "uidprobe_config.h"\n'
        "#ifndef USESETEUID\n#define USESETEUID 1 /* conf.h: assume POSIX */\n#endif\n"
        'int main(void) { puts(USESETEUID ? "seteuid" : "setreuid"); return 0; }\n'
    )
    subprocess.run(["cc", "-Wall", "-Werror", "-o", str(tmp_path / "prog"), str(tmp_path / "prog.c")], check=True)
    run = subprocess.run([str(tmp_path / "prog")], capture_output=True, text=True, check=True)
    assert run.stdout == "setreuid\n"


# ------------------------------------------------------------ export -o


def test_export_o_writes_the_file_and_refuses_an_unsafe_directory_with_73(store_dir: Path) -> None:
    path = stored(store_dir / "v")
    out = store_dir / "uidprobe.prom"
    p = run_cli("export", "prometheus", "--store", str(path), "-o", str(out))
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    assert out.read_text().startswith("# HELP uidprobe_value ")
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    unsafe = store_dir / "open"
    unsafe.mkdir()
    unsafe.chmod(0o777)
    p = run_cli("export", "json", "--store", str(path), "-o", str(unsafe / "x.json"))
    assert p.returncode == cli.EX_CANTCREAT and p.stderr.startswith(f"uidprobe: cannot write {unsafe}/x.json: ")
    assert list(unsafe.iterdir()) == []


# ------------------------------------------------------------ configure --if-stale


@requires_root
def test_configure_if_stale_returns_at_once_for_a_valid_store(store_dir: Path) -> None:
    path = stored(store_dir / "v")
    before = path.stat().st_mtime_ns
    p = run_cli("configure", "--if-stale", "--store", str(path))
    assert (p.returncode, p.stdout) == (0, f"{path} is valid and current; nothing to do\n")
    assert path.stat().st_mtime_ns == before


@requires_root
def test_configure_if_stale_measures_again_when_stale(store_dir: Path) -> None:
    path = stored(store_dir / "v")
    make_stale(path)
    p = run_cli("configure", "--if-stale", "--store", str(path))
    assert p.returncode == 0 and p.stdout == f"wrote {len(OBSERVED)} verdicts to {path}\n"
    assert store.load(str(path)).valid


def contrib_command(name: str) -> str:
    text = (ROOT / "contrib" / name).read_text()
    if name.endswith(".service"):
        (line,) = [x for x in text.splitlines() if x.startswith("ExecStart=")]
        return line[len("ExecStart=") :]
    (match,) = re.findall(r'DPkg::Post-Invoke \{ "(.*)"; \};', text)
    return str(match)


@requires_root
@pytest.mark.parametrize("name", ["uidprobe-configure.service", "apt-hook"])
def test_the_contrib_units_run_configure_only_when_the_store_is_stale(name: str, store_dir: Path) -> None:
    command = contrib_command(name)
    assert "configure --if-stale" in command
    command = command.replace("/usr/bin/uidprobe", shlex.quote(UIDPROBE))  # as installed, in this venv
    env = {**os.environ, store.ENV_VAR: str(store_dir / "verdicts"), "PATH": f"{Path(UIDPROBE).parent}:/usr/bin:/bin"}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, check=False)

    first = run()
    assert first.returncode == 0, first.stderr
    assert store.load(str(store_dir / "verdicts")).valid
    mtime = (store_dir / "verdicts").stat().st_mtime_ns
    second = run()
    assert second.returncode == 0 and (store_dir / "verdicts").stat().st_mtime_ns == mtime
    make_stale(store_dir / "verdicts")
    assert run().returncode == 0 and store.load(str(store_dir / "verdicts")).valid


def test_the_systemd_unit_is_a_oneshot_after_local_filesystems() -> None:
    text = (ROOT / "contrib" / "uidprobe-configure.service").read_text()
    for line in ("Type=oneshot", "After=local-fs.target", "ExecStart=/usr/bin/uidprobe configure --if-stale"):
        assert line in text.splitlines()
