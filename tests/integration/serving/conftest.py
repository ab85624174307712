"""A tiny Llama built at test time and one vLLM engine serving it for the session.

The model and its tokenizer come from ``bench.tiny_model`` (random weights, a
real chat template and BPE tokenizer); nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bench.tiny_model import MAX_POSITIONS, build_tiny_llama
from core.errors import UpstreamError
from serving.base import EngineRequest, EngineSpec
from serving.vllm_engine import VLLMEngine, VLLMOptions

# Set before vLLM or transformers are imported: no hub access, no usage reports,
# and the model worker lives inside vLLM's engine-core process (one child, not two).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

TINY_MODEL = "tiny-llama"
TINY_EMBEDDER = "tiny-llama-embed"
MAX_MODEL_LEN = MAX_POSITIONS
# Below the 40 requests of the concurrency test, so some of them have to queue.
MAX_NUM_SEQS = 16


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("vllm", reason="vLLM is not installed; run scripts/install.sh")
    return build_tiny_llama(tmp_path_factory.mktemp(TINY_MODEL))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llama_dir: Path) -> Any:
    """The model's tokenizer loaded on its own, to count tokens apart from the engine."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vllm_engine(tiny_llama_dir: Path) -> AsyncIterator[VLLMEngine]:
    options = VLLMOptions(
        model_path=str(tiny_llama_dir),
        dtype="float32",
        max_model_len=MAX_MODEL_LEN,
        # A fixed, small KV cache: on CPU the default would claim most of host RAM.
        kv_cache_space_gib=0.25,
        enforce_eager=True,
        max_num_seqs=MAX_NUM_SEQS,
        seed=0,
        # The tiny template writes tool calls in the Hermes format.
        tool_parser="hermes",
        # Random weights would otherwise loop on whitespace inside constrained JSON.
        compact_json=True,
    )
    engine = VLLMEngine(EngineSpec(name="tiny-vllm", provider="vllm", model=TINY_MODEL, options=options))
    started = time.perf_counter()
    await engine.start()
    print(f"\nvLLM engine started in {time.perf_counter() - started:.1f}s")
    yield engine
    # Closing with a request in flight ends it with an error instead of leaving it hanging.
    body = {"model": TINY_MODEL, "prompt": "Hello", "max_tokens": 400, "min_tokens": 400}
    pending = engine.stream(EngineRequest(kind="completion", body=body, request_id="closing"))
    await anext(pending)
    await engine.close()
    with pytest.raises(UpstreamError):
        await asyncio.wait_for(anext(pending), timeout=10)
    assert not await engine.health()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vllm_embedder(tiny_llama_dir: Path) -> AsyncIterator[VLLMEngine]:
    """The same tiny Llama run as an embedding model (vLLM's pooling runner)."""
    options = VLLMOptions(
        model_path=str(tiny_llama_dir),
        dtype="float32",
        max_model_len=MAX_MODEL_LEN,
        kv_cache_space_gib=0.1,
        enforce_eager=True,
        max_num_seqs=4,
        seed=0,
        task="embed",
    )
    engine = VLLMEngine(EngineSpec(name="tiny-vllm-embed", provider="vllm", model=TINY_EMBEDDER, options=options))
    await engine.start()
    yield engine
    await engine.close()
