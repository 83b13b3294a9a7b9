#!/usr/bin/env bash
# Downstream check: build examples/downstream exactly as docs/build.md shows
# it (the commands of its `shell-session` block, run as written), with build
# isolation, from a local wheelhouse only, so the uidprobe in the isolated
# build environment is the wheel given here; then the extension must import
# and must have been compiled with exactly the macros define_macros() gives.
#
#   scripts/downstream_check.sh UIDPROBE_WHEEL VENV
#
# VENV is a venv with that wheel installed; its python3 is the one the
# documented commands run.  Used by scripts/release_check.sh (the release's
# repaired wheel) and tests/test_downstream.py (a wheel built from the tree).
# Needs a package index for setuptools and cffi (pip download).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
wheel=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
venv=$(cd "$2" && pwd)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/uidprobe-downstream.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() {
    printf 'downstream_check: FAIL: %s\n' "$*" >&2
    exit 1
}

# The wheelhouse: the given uidprobe wheel and what building needs.
"$venv/bin/pip" download --quiet --dest "$tmp/house" setuptools "$wheel" >"$tmp/log" 2>&1 || {
    cat "$tmp/log" >&2
    fail "pip download setuptools $wheel"
}

# The documented commands, from the one shell-session block of docs/build.md.
awk '/^```shell-session$/ {on = 1; next} /^```$/ {on = 0} on && /^[#$] / {print substr($0, 3)}' \
    "$root/docs/build.md" >"$tmp/commands"
[ "$(wc -l <"$tmp/commands")" -ge 3 ] || fail "docs/build.md has no shell-session block of commands"

mkdir -p "$tmp/work/examples"
cp -r "$root/examples/downstream" "$tmp/work/examples/"
cd "$tmp/work"
export PATH="$venv/bin:$PATH" PIP_NO_INDEX=1 PIP_FIND_LINKS="$tmp/house"
while IFS= read -r cmd; do
    echo "+ $cmd"
    sh -c "$cmd" || fail "$cmd"
done <"$tmp/commands"

python3 - <<'PY' || fail "the extension does not match uidprobe.define_macros()"
import switchmode
import uidprobe
from uidprobe import config

want = sorted(name for name, _ in uidprobe.define_macros())
got = sorted(switchmode.macros().split())
assert got == want, f"compiled with {got}, define_macros() gives {want}"
print(f"downstream_check: OK: {len(want)} macro(s) from {config.SOURCE}, mechanism {switchmode.mechanism()}")
PY
