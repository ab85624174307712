"""The vLLM engine under control: aborts, tenant isolation, load and bad input.

Same session engine and tiny model as ``test_vllm_engine.py``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from core.errors import InvalidRequest, UpstreamError
from serving.base import EngineRequest, Load
from serving.vllm_engine import VLLMEngine
from tests.integration.serving.conftest import MAX_MODEL_LEN, MAX_NUM_SEQS
from tests.integration.serving.vllm_requests import (
    chat_request,
    collect_chunks,
    completion_request,
    engine_request,
    wait_busy,
    wait_idle,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


# --- aborts --------------------------------------------------------------------------------


def _long_chat() -> EngineRequest:
    return chat_request(max_tokens=400, min_tokens=400, temperature=1.0)


async def test_closing_the_stream_aborts_the_request(vllm_engine: VLLMEngine) -> None:
    stream = vllm_engine.stream(_long_chat())
    first = await anext(stream)
    assert json.loads(first.data)["choices"][0]["delta"]["role"] == "assistant"
    load = vllm_engine.load()
    assert load.running + load.waiting == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert await wait_idle(vllm_engine) == Load()
    # The engine keeps serving after the abort.
    after = await vllm_engine.generate(chat_request(max_tokens=2, min_tokens=2))
    assert after.usage is not None and after.usage.completion_tokens == 2


async def test_cancelled_generate_aborts_the_request(vllm_engine: VLLMEngine) -> None:
    task = asyncio.create_task(vllm_engine.generate(_long_chat()))
    assert (await wait_busy(vllm_engine)) != Load()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_idle(vllm_engine) == Load()


async def test_abort_by_request_id_ends_the_stream(vllm_engine: VLLMEngine) -> None:
    request = _long_chat()
    stream = vllm_engine.stream(request)
    await anext(stream)
    await vllm_engine.abort(request.request_id)
    with pytest.raises(UpstreamError):
        async for _ in stream:
            pass
    assert await wait_idle(vllm_engine) == Load()


# --- tenants -----------------------------------------------------------------------------


async def test_tenant_is_the_cache_salt(vllm_engine: VLLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []
    inner = vllm_engine._engine
    assert inner is not None
    real_generate = inner.generate

    def spy(prompt: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        sent.append(prompt)
        return real_generate(prompt, *args, **kwargs)

    monkeypatch.setattr(inner, "generate", spy)
    for tenant in ("acme", "globex", ""):
        await vllm_engine.generate(chat_request(tenant=tenant, max_tokens=1))
    assert [prompt.get("cache_salt") for prompt in sent] == ["acme", "globex", None]
    assert sent[0]["prompt_token_ids"] == sent[1]["prompt_token_ids"]


async def test_tenants_never_share_prefix_cache(vllm_engine: VLLMEngine) -> None:
    # Long enough for two full KV blocks (128 tokens each on CPU), unique to this run.
    prompt = uuid.uuid4().hex + " " + " ".join(["The quick brown fox jumps over the lazy dog."] * 30)

    async def cached(tenant: str) -> int:
        completion = await vllm_engine.generate(completion_request(prompt, tenant=tenant, max_tokens=1))
        assert completion.usage is not None and completion.usage.prompt_tokens < MAX_MODEL_LEN
        return completion.usage.cached_tokens

    tenant_a, tenant_b = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    assert await cached(tenant_a) == 0
    assert await cached(tenant_a) >= 128
    assert await cached(tenant_b) == 0
    assert await cached(tenant_b) >= 128


# --- load ---------------------------------------------------------------------------------


async def test_many_concurrent_requests_complete(vllm_engine: VLLMEngine) -> None:
    async def one(index: int) -> int:
        fields = {"max_tokens": 8, "min_tokens": 8, "temperature": 0.8, "seed": index}
        request = chat_request(**fields) if index % 2 else completion_request(f"Numbers: {index}", **fields)
        if index % 4 < 2:
            completion = await vllm_engine.generate(request)
            assert completion.usage is not None
            return completion.usage.completion_tokens
        chunks = await collect_chunks(vllm_engine.stream(request))
        assert chunks[-1].usage is not None
        return chunks[-1].usage.completion_tokens

    seen: list[Load] = []
    reported: list[int] = []

    async def watch() -> None:
        while True:
            seen.append(vllm_engine.load())
            # What vLLM's scheduler itself last reported as waiting, through the stats hook.
            reported.append(vllm_engine._queue.waiting)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.wait_for(asyncio.gather(*(one(index) for index in range(40))), timeout=120)
    finally:
        watcher.cancel()
    assert results == [8] * 40
    # More requests than the engine's batch: the surplus shows up as waiting.
    assert max(load.running for load in seen) <= MAX_NUM_SEQS
    assert max(load.waiting for load in seen) > 0
    assert max(reported) > 0
    assert await wait_idle(vllm_engine) == Load()


# --- invalid input ---------------------------------------------------------------------------

_CONTEXT = "context_length_exceeded"
INVALID: list[tuple[str, dict[str, Any], str | None, str | None]] = [
    ("chat", {"temperature": 2.5}, "temperature", None),
    ("chat", {"top_p": 0}, "top_p", None),
    ("chat", {"max_tokens": 0}, "max_tokens", None),
    ("chat", {"max_completion_tokens": MAX_MODEL_LEN}, "max_completion_tokens", _CONTEXT),
    ("chat", {"n": 0}, "n", None),
    ("chat", {"stop": [""]}, "stop", None),
    ("chat", {"presence_penalty": 3}, "presence_penalty", None),
    ("chat", {"seed": "7"}, "seed", None),
    ("chat", {"top_logprobs": 2}, "top_logprobs", None),
    ("chat", {"logprobs": True, "top_logprobs": 50}, "top_logprobs", None),
    ("chat", {"messages": "hi"}, "messages", None),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0]", None),
    ("chat", {"response_format": {"type": "yaml"}}, "response_format", None),
    ("chat", {"tools": [{"type": "function"}], "tool_choice": "required"}, "tools", None),
    ("completion", {}, "prompt", None),
    ("completion", {"prompt": 5}, "prompt", None),
    ("completion", {"prompt": "hi", "logprobs": 99}, "logprobs", None),
    ("completion", {"prompt": "hi", "echo": True}, "echo", None),
    ("completion", {"prompt": list(range(3, 3 + MAX_MODEL_LEN))}, "prompt", _CONTEXT),
]


@pytest.mark.parametrize(("kind", "fields", "param", "code"), INVALID)
async def test_invalid_parameters_are_rejected(
    vllm_engine: VLLMEngine, kind: str, fields: dict[str, Any], param: str | None, code: str | None
) -> None:
    request = chat_request(**fields) if kind == "chat" else engine_request("completion", **fields)
    with pytest.raises(InvalidRequest) as whole:
        await vllm_engine.generate(request)
    assert whole.value.param == param
    if code is not None:
        assert whole.value.code == code
    # Streams fail the same way, before any chunk.
    with pytest.raises(InvalidRequest):
        await anext(vllm_engine.stream(request))


async def test_out_of_vocabulary_token_is_rejected(vllm_engine: VLLMEngine) -> None:
    with pytest.raises(InvalidRequest):
        await vllm_engine.generate(completion_request([1, 10**6], max_tokens=1))
    assert await vllm_engine.health()


async def test_embeddings_are_not_served(vllm_engine: VLLMEngine) -> None:
    with pytest.raises(InvalidRequest):
        await vllm_engine.embed(engine_request("embedding", input="hi"))
