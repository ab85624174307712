"""The in-process vLLM engine serving a tiny random-weight Llama on CPU.

Random weights make the text noise, so the checks are about what the gateway
relies on: OpenAI shapes, exact usage, stop/seed/n semantics and logprobs.
``min_tokens`` pins completion lengths where exact counts are asserted; the tiny
model's wide logit gaps make greedy (temperature 0) runs repeatable. Aborts,
tenants, load and bad input are in ``test_vllm_engine_control.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from core.errors import UpstreamError
from serving.base import Engine, EngineSpec, Load
from serving.vllm_engine import VLLMEngine, VLLMOptions
from serving.vllm_runtime import visible_device
from tests.integration.serving.conftest import TINY_MODEL
from tests.integration.serving.vllm_requests import (
    QUESTION,
    chat_request,
    collect_chunks,
    completion_request,
    decode_chunks,
    template_len,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

# --- lifecycle and options --------------------------------------------------------


async def test_engine_is_up_and_idle(vllm_engine: VLLMEngine) -> None:
    assert isinstance(vllm_engine, Engine)
    assert vllm_engine.provider == "vllm"
    assert await vllm_engine.health()
    assert vllm_engine.load() == Load(running=0, waiting=0)


async def test_options_reject_unknown_keys_and_conflicts() -> None:
    with pytest.raises(msgspec.ValidationError, match="bogus"):
        msgspec.convert({"model_path": "/m", "bogus": 1}, VLLMOptions)
    with pytest.raises(msgspec.ValidationError, match="gpu_index"):
        msgspec.convert({"model_path": "/m", "gpu_index": 0, "tensor_parallel_size": 2}, VLLMOptions)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"model_path": "/m", "dtype": "int4"}, VLLMOptions)
    options = msgspec.convert({"model_path": "/m", "kv_cache_space_gib": 1.5}, VLLMOptions)
    assert options.kv_cache_space_gib == 1.5 and options.gpu_memory_utilization == 0.9


async def test_gpu_index_picks_among_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with visible_device(1):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    with visible_device(1):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5"
    with pytest.raises(ValueError, match="beyond"), visible_device(2):
        pass


async def test_start_refuses_a_model_path_that_is_not_a_directory(tmp_path: Path) -> None:
    options = VLLMOptions(model_path=str(tmp_path / "missing"))
    engine = VLLMEngine(EngineSpec(name="typo", provider="vllm", model="m", options=options))
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        await engine.start()
    assert not await engine.health()


async def test_unstarted_engine_refuses_requests() -> None:
    engine = VLLMEngine(EngineSpec(name="cold", provider="vllm", model="m", options=VLLMOptions(model_path="/m")))
    assert not await engine.health()
    assert engine.load() == Load()
    with pytest.raises(UpstreamError):
        await engine.generate(chat_request())


# --- chat -------------------------------------------------------------------------------


async def test_chat_usage_is_exact(vllm_engine: VLLMEngine, tiny_tokenizer: Any) -> None:
    request = chat_request(max_tokens=8, min_tokens=8, temperature=0)
    completion = await vllm_engine.generate(request)
    body = json.loads(completion.body)
    expected_prompt = template_len(tiny_tokenizer, QUESTION)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (expected_prompt, 8)
    assert body["usage"] == {
        "prompt_tokens": expected_prompt,
        "completion_tokens": 8,
        "total_tokens": expected_prompt + 8,
        "prompt_tokens_details": {"cached_tokens": completion.usage.cached_tokens},
    }
    assert body["id"] == f"chatcmpl-{request.request_id}"
    assert (body["object"], body["model"]) == ("chat.completion", TINY_MODEL)
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["logprobs"] is None


async def test_chat_stream_matches_whole_response(vllm_engine: VLLMEngine) -> None:
    whole = json.loads((await vllm_engine.generate(chat_request(max_tokens=12, min_tokens=12, temperature=0))).body)
    chunks = await collect_chunks(vllm_engine.stream(chat_request(max_tokens=12, min_tokens=12, temperature=0)))
    payloads = decode_chunks(chunks)
    assert all(payload["object"] == "chat.completion.chunk" for payload in payloads)
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(p["choices"][0]["delta"].get("content", "") for p in payloads if p["choices"])
    assert content == whole["choices"][0]["message"]["content"]
    assert "".join(chunk.text for chunk in chunks) == content
    finish = payloads[-2]["choices"][0]
    assert (finish["delta"], finish["finish_reason"]) == ({}, "length")
    assert chunks[-2].finish_reason == "length"
    last = chunks[-1]
    assert last.usage_only and payloads[-1]["choices"] == []
    assert last.usage is not None
    assert payloads[-1]["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"]
    assert (last.usage.completion_tokens, payloads[-1]["usage"]["completion_tokens"]) == (12, 12)
    assert not any(chunk.usage_only for chunk in chunks[:-1])


async def test_chat_tools_reach_the_template(vllm_engine: VLLMEngine, tiny_tokenizer: Any) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    with_tools = await vllm_engine.generate(chat_request(tools=tools, max_tokens=1))
    without = await vllm_engine.generate(chat_request(tools=tools, tool_choice="none", max_tokens=1))
    assert with_tools.usage is not None and without.usage is not None
    assert with_tools.usage.prompt_tokens == template_len(tiny_tokenizer, QUESTION, tools)
    assert without.usage.prompt_tokens == template_len(tiny_tokenizer, QUESTION)
    assert with_tools.usage.prompt_tokens > without.usage.prompt_tokens


async def test_seed_makes_sampling_repeatable(vllm_engine: VLLMEngine) -> None:
    async def sample(seed: int) -> tuple[str, list[str]]:
        request = chat_request(temperature=1.0, seed=seed, max_tokens=12, min_tokens=12, logprobs=True, top_logprobs=2)
        choice = json.loads((await vllm_engine.generate(request)).body)["choices"][0]
        entries = choice["logprobs"]["content"]
        assert len(entries) == 12
        for entry in entries:
            assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
            ranked = [alt["logprob"] for alt in entry["top_logprobs"]]
            assert len(ranked) == 2 and ranked == sorted(ranked, reverse=True)
            assert entry["logprob"] <= ranked[0]
        return choice["message"]["content"], [entry["token"] + str(entry["logprob"]) for entry in entries]

    first, again, other = await sample(1234), await sample(1234), await sample(4321)
    assert first == again
    assert first[1] != other[1]


async def test_n_choices_whole_and_streamed(vllm_engine: VLLMEngine) -> None:
    fields = {"n": 2, "temperature": 1.0, "seed": 7, "max_tokens": 6, "min_tokens": 6}
    completion = await vllm_engine.generate(chat_request(**fields))
    body = json.loads(completion.body)
    assert [choice["index"] for choice in body["choices"]] == [0, 1]
    assert completion.usage is not None and completion.usage.completion_tokens == 12

    payloads = decode_chunks(await collect_chunks(vllm_engine.stream(chat_request(**fields))))
    choices = [choice for payload in payloads for choice in payload["choices"]]
    roles = sorted(c["index"] for c in choices if c["delta"].get("role") == "assistant")
    finished = sorted(c["index"] for c in choices if c["finish_reason"] == "length")
    assert roles == [0, 1] and finished == [0, 1]
    assert payloads[-1]["usage"]["completion_tokens"] == 12


# --- completions ---------------------------------------------------------------------


async def test_completion_usage_and_stream(vllm_engine: VLLMEngine, tiny_tokenizer: Any) -> None:
    prompt = "The quick brown fox"
    expected_prompt = len(tiny_tokenizer.encode(prompt))
    fields = {"max_tokens": 10, "min_tokens": 10, "temperature": 0}
    completion = await vllm_engine.generate(completion_request(prompt, **fields))
    body = json.loads(completion.body)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (expected_prompt, 10)

    chunks = await collect_chunks(vllm_engine.stream(completion_request(prompt, **fields)))
    payloads = decode_chunks(chunks)
    assert all(payload["object"] == "text_completion" for payload in payloads)
    text = "".join(choice["text"] for payload in payloads for choice in payload["choices"])
    assert text == body["choices"][0]["text"]
    assert payloads[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1].usage_only and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (expected_prompt, 10)


async def test_completion_prompt_forms(vllm_engine: VLLMEngine, tiny_tokenizer: Any) -> None:
    ids = tiny_tokenizer.encode("Numbers: 0 1 2 3")
    by_ids = await vllm_engine.generate(completion_request(ids, max_tokens=3, min_tokens=3))
    assert by_ids.usage is not None and by_ids.usage.prompt_tokens == len(ids)

    prompts = ["Hello, how", "Streams of tokens flow"]
    expected_prompt = sum(len(tiny_tokenizer.encode(prompt)) for prompt in prompts)
    fields = {"n": 2, "max_tokens": 4, "min_tokens": 4, "seed": 3}
    completion = await vllm_engine.generate(completion_request(prompts, **fields))
    body = json.loads(completion.body)
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2, 3]
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (expected_prompt, 16)

    payloads = decode_chunks(await collect_chunks(vllm_engine.stream(completion_request(prompts, **fields))))
    finished = sorted(c["index"] for p in payloads for c in p["choices"] if c["finish_reason"] == "length")
    assert finished == [0, 1, 2, 3]
    assert payloads[-1]["usage"]["completion_tokens"] == 16


async def test_completion_logprobs(vllm_engine: VLLMEngine) -> None:
    completion = await vllm_engine.generate(completion_request("Hello", max_tokens=5, min_tokens=5, logprobs=3))
    logprobs = json.loads(completion.body)["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == 5
    assert all(1 <= len(top) <= 3 for top in logprobs["top_logprobs"])
    offsets = logprobs["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets)


async def test_stop_sequence_cuts_the_text(vllm_engine: VLLMEngine) -> None:
    baseline = json.loads((await vllm_engine.generate(completion_request("Hello", max_tokens=24, temperature=0))).body)
    text = baseline["choices"][0]["text"]
    # A visible character after the start, so the expected answer is a strict prefix.
    candidates = [ch for ch in text[1:] if ch.isprintable() and not ch.isspace() and ch != "\ufffd"]
    assert candidates, "the tiny model's greedy answer has no usable stop character"
    stop = candidates[0]
    stopped = json.loads(
        (await vllm_engine.generate(completion_request("Hello", max_tokens=24, temperature=0, stop=[stop]))).body
    )
    choice = stopped["choices"][0]
    assert choice["text"] == text[: text.index(stop)]
    assert choice["finish_reason"] == "stop"
