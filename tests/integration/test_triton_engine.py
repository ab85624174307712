"""TritonEngine against a fake Triton gRPC server (tests/fakes/triton_server.py)."""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from core.errors import (
    GatewayError,
    InvalidRequest,
    UpstreamConnectError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from serving.base import Engine, EngineRequest, EngineSpec, StreamChunk, Timeouts
from serving.triton import TritonEngine, TritonOptions
from serving.triton_openai import USAGE_ESTIMATED_HEADER
from tests.fakes.triton_server import (
    EMBEDDING_DIM,
    FakeTriton,
    embedding_for,
    reply_words,
)

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about rivers and lakes"}]
CHAT_PROMPT = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nTell me about rivers and lakes<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTriton]:
    server = FakeTriton()
    await server.start()
    yield server
    await server.close()


def make_engine(target: str, model: str = "llm", timeouts: Timeouts | None = None, **options: Any) -> TritonEngine:
    spec = EngineSpec(
        name="triton-dep",
        provider="triton",
        model=model,
        base_url=f"grpc://{target}",
        timeouts=timeouts or Timeouts(),
        options=TritonOptions(embedding_model="embedder", **options),
    )
    return TritonEngine(spec)


@pytest.fixture
async def engine(fake: FakeTriton) -> AsyncIterator[TritonEngine]:
    eng = make_engine(fake.target)
    await eng.start()
    yield eng
    await eng.close()


async def started(target: str, model: str = "llm", **kwargs: Any) -> TritonEngine:
    eng = make_engine(target, model, **kwargs)
    await eng.start()
    return eng


def chat(request_id: str = "req-1", **body: Any) -> EngineRequest:
    return EngineRequest(kind="chat", body={"model": "llm", "messages": CHAT, **body}, request_id=request_id)


def completion(prompt: str, request_id: str = "req-2", **body: Any) -> EngineRequest:
    return EngineRequest(kind="completion", body={"model": "llm", "prompt": prompt, **body}, request_id=request_id)


async def collect(chunks: AsyncIterator[StreamChunk]) -> list[StreamChunk]:
    return [chunk async for chunk in chunks]


def test_engine_protocol(engine: TritonEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.provider == "triton"
    assert engine.name == "triton-dep"


def test_options_reject_unknown_keys() -> None:
    with pytest.raises(msgspec.ValidationError, match="embedding_modle"):
        msgspec.convert({"embedding_modle": "x"}, TritonOptions)


async def test_chat_generate(engine: TritonEngine, fake: FakeTriton) -> None:
    result = await engine.generate(chat(max_tokens=50, temperature=0.5, stop=["END"]))
    body = msgspec.json.decode(result.body)
    expected = "".join(reply_words(CHAT_PROMPT, 50))
    assert body["object"] == "chat.completion"
    assert body["id"] == "chatcmpl-req-1"
    assert body["model"] == "llm"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected}
    assert body["choices"][0]["finish_reason"] == "stop"
    words = len(CHAT_PROMPT.split())
    assert body["usage"] == {"prompt_tokens": words, "completion_tokens": words, "total_tokens": 2 * words}
    assert result.usage is not None and result.usage.total_tokens == 2 * words
    assert USAGE_ESTIMATED_HEADER not in result.headers
    [sent] = fake.requests
    assert sent.rpc == "stream" and sent.model == "llm" and sent.request_id == "req-1"
    assert sent.value("text_input").decode() == CHAT_PROMPT
    assert sent.value("stream") is False
    assert sent.value("exclude_input_in_output") is True
    assert sent.inputs["text_input"][:2] == ("BYTES", [1])
    sampling = msgspec.json.decode(sent.value("sampling_parameters"))
    assert sampling == {"max_tokens": 50, "temperature": 0.5, "stop": ["END"]}


async def test_completion_generate(engine: TritonEngine) -> None:
    result = await engine.generate(completion("one two three", max_tokens=10))
    body = msgspec.json.decode(result.body)
    assert body["object"] == "text_completion"
    assert body["id"] == "cmpl-req-2"
    assert body["choices"][0]["text"] == "one two three"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 3


async def test_max_tokens_truncates(engine: TritonEngine) -> None:
    result = await engine.generate(completion("a b c d e f g", max_tokens=3))
    body = msgspec.json.decode(result.body)
    assert body["choices"][0]["text"] == "a b c"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


async def test_max_completion_tokens_and_default(fake: FakeTriton) -> None:
    eng = await started(fake.target, default_max_tokens=77)
    try:
        await eng.generate(completion("x", max_completion_tokens=4))
        await eng.generate(completion("x"))
    finally:
        await eng.close()
    limits = [msgspec.json.decode(sent.value("sampling_parameters"))["max_tokens"] for sent in fake.requests]
    assert limits == [4, 77]


async def test_stream_chat_chunks_in_order(engine: TritonEngine, fake: FakeTriton) -> None:
    chunks = await collect(engine.stream(chat(max_tokens=4)))
    bodies = [msgspec.json.decode(chunk.data) for chunk in chunks]
    assert all(body["object"] == "chat.completion.chunk" and body["id"] == "chatcmpl-req-1" for body in bodies)
    assert bodies[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [body["choices"][0]["delta"]["content"] for body in bodies[1:-2]]
    assert deltas == reply_words(CHAT_PROMPT, 4)
    assert [chunk.text for chunk in chunks[1:-2]] == deltas
    assert bodies[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length"}
    assert chunks[-2].finish_reason == "length"
    assert bodies[-1]["choices"] == []
    words = len(CHAT_PROMPT.split())
    assert bodies[-1]["usage"] == {"prompt_tokens": words, "completion_tokens": 4, "total_tokens": words + 4}
    assert chunks[-1].usage_only and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert fake.requests[0].value("stream") is True
    await asyncio.sleep(0.05)
    assert fake.cancelled == []


async def test_stream_completion_has_no_role_chunk(engine: TritonEngine) -> None:
    chunks = await collect(engine.stream(completion("red green blue")))
    bodies = [msgspec.json.decode(chunk.data) for chunk in chunks]
    assert [body["choices"][0]["text"] for body in bodies[:-1]] == ["red", " green", " blue", ""]
    assert bodies[-2]["choices"][0]["finish_reason"] == "stop"
    assert bodies[-1]["usage"]["completion_tokens"] == 3


async def test_estimated_usage_when_server_does_not_count(fake: FakeTriton) -> None:
    eng = await started(fake.target, count_tokens_with="estimate")
    try:
        result = await eng.generate(completion("alpha beta gamma delta", max_tokens=2))
        chunks = await collect(eng.stream(completion("alpha beta gamma delta", max_tokens=2)))
    finally:
        await eng.close()
    assert not any(name.startswith("return_") for name in fake.requests[0].inputs)
    body = msgspec.json.decode(result.body)
    # One token per four characters, rounded up: 22 chars -> 6, "alpha beta" -> 3.
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9, "estimated": True}
    assert result.headers == {USAGE_ESTIMATED_HEADER: "true"}
    assert body["choices"][0]["finish_reason"] == "length"
    assert msgspec.json.decode(chunks[-1].data)["usage"]["estimated"] is True


async def test_unary_generate(fake: FakeTriton) -> None:
    eng = await started(fake.target, generate_rpc="unary")
    try:
        result = await eng.generate(completion("just unary words", max_tokens=2))
    finally:
        await eng.close()
    assert fake.requests[0].rpc == "unary"
    body = msgspec.json.decode(result.body)
    assert body["choices"][0]["text"] == "just unary"
    assert body["usage"]["completion_tokens"] == 2


async def test_tensorrt_llm_tensors(fake: FakeTriton) -> None:
    eng = await started(fake.target, backend="tensorrt_llm")
    try:
        result = await eng.generate(completion("trt llm output here", max_tokens=3, temperature=0.2, seed=-1, stop=["x", "y"]))
    finally:
        await eng.close()
    sent = fake.requests[0]
    assert sent.inputs["text_input"][:2] == ("BYTES", [1, 1])
    assert sent.inputs["max_tokens"] == ("INT32", [1, 1], [3])
    assert sent.inputs["stream"] == ("BOOL", [1, 1], [False])
    assert sent.inputs["temperature"][:2] == ("FP32", [1, 1])
    assert sent.inputs["random_seed"] == ("UINT64", [1, 1], [2**64 - 1])
    assert sent.inputs["stop_words"] == ("BYTES", [1, 2], [b"x", b"y"])
    assert "sampling_parameters" not in sent.inputs
    body = msgspec.json.decode(result.body)
    assert body["choices"][0]["text"] == "trt llm output"
    assert body["choices"][0]["finish_reason"] == "length"


async def test_embed_shape_and_values(engine: TritonEngine, fake: FakeTriton) -> None:
    texts = ["hello world", "a", "rivers and lakes"]
    result = await engine.embed(EngineRequest(kind="embedding", body={"model": "llm", "input": texts}, request_id="e1"))
    body = msgspec.json.decode(result.body)
    assert body["object"] == "list"
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    vectors = [item["embedding"] for item in body["data"]]
    assert all(len(vector) == EMBEDDING_DIM for vector in vectors)
    assert vectors == [embedding_for(text) for text in texts]
    assert vectors[0] == [11.0, 2.0, float(sum(b"hello world") % 251), 1.0]
    tokens = 3 + 1 + 4
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens, "estimated": True}
    assert result.usage is not None and result.usage.prompt_tokens == tokens
    [sent] = fake.requests
    assert sent.model == "embedder" and sent.inputs["text"][:2] == ("BYTES", [3]) and sent.outputs == ["embedding"]


async def test_embed_base64(engine: TritonEngine) -> None:
    body = {"model": "llm", "input": "hi there", "encoding_format": "base64"}
    result = await engine.embed(EngineRequest(kind="embedding", body=body, request_id="e2"))
    encoded = msgspec.json.decode(result.body)["data"][0]["embedding"]
    assert list(struct.unpack("<4f", base64.b64decode(encoded))) == embedding_for("hi there")


async def test_embed_errors(fake: FakeTriton) -> None:
    no_model = TritonEngine(EngineSpec(name="d", provider="triton", model="llm", base_url=fake.target))
    await no_model.start()
    wrong_input = await started(fake.target, embedding_input="texts")
    try:
        with pytest.raises(InvalidRequest):
            await no_model.embed(EngineRequest(kind="embedding", body={"input": "x"}, request_id="e3"))
        with pytest.raises(UpstreamRejected) as info:
            await wrong_input.embed(EngineRequest(kind="embedding", body={"input": "x"}, request_id="e4"))
        assert info.value.status == 400
        with pytest.raises(InvalidRequest):
            await wrong_input.embed(EngineRequest(kind="embedding", body={"input": [1, 2]}, request_id="e5"))
    finally:
        await no_model.close()
        await wrong_input.close()


ERROR_CASES = [
    ("llm-unavailable", UpstreamConnectError, 502),
    ("llm-invalid", UpstreamRejected, 400),
    ("llm-exhausted", UpstreamRateLimited, 429),
    ("no-such-model", UpstreamRejected, 404),
]


@pytest.mark.parametrize("rpc", ["stream", "unary"])
@pytest.mark.parametrize(("model", "error", "status"), ERROR_CASES)
async def test_generate_error_mapping(fake: FakeTriton, rpc: str, model: str, error: type[GatewayError], status: int) -> None:
    eng = await started(fake.target, model, generate_rpc=rpc)
    try:
        with pytest.raises(error) as info:
            await eng.generate(chat())
    finally:
        await eng.close()
    assert info.value.status == status
    assert fake.requests[0].rpc == rpc
    assert "Tell me" not in info.value.message


@pytest.mark.parametrize(("model", "error", "status"), [*ERROR_CASES, ("llm-inband", UpstreamRejected, 400)])
async def test_stream_error_mapping(fake: FakeTriton, model: str, error: type[GatewayError], status: int) -> None:
    eng = await started(fake.target, model)
    try:
        with pytest.raises(error) as info:
            await collect(eng.stream(chat()))
    finally:
        await eng.close()
    assert info.value.status == status
    assert eng.load().running == 0


async def test_unreachable_server() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    eng = await started(f"127.0.0.1:{port}")
    try:
        with pytest.raises(UpstreamConnectError):
            await eng.generate(chat())
        assert await eng.health() is False
    finally:
        await eng.close()


@pytest.mark.parametrize("timeouts", [Timeouts(read_s=0.2, total_s=10), Timeouts(read_s=10, total_s=0.3)])
async def test_timeouts(fake: FakeTriton, timeouts: Timeouts) -> None:
    eng = await started(fake.target, "llm-hang", timeouts=timeouts)
    try:
        with pytest.raises(UpstreamTimeout):
            await asyncio.wait_for(eng.generate(chat()), 5)
        with pytest.raises(UpstreamTimeout):
            await asyncio.wait_for(collect(eng.stream(chat())), 5)
    finally:
        await eng.close()
    assert eng.load().running == 0


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_early_close_cancels_the_call(fake: FakeTriton) -> None:
    eng = await started(fake.target, "llm-slow")
    try:
        chunks = eng.stream(chat("slow-1", max_tokens=500))
        received = [await anext(chunks) for _ in range(3)]
        assert msgspec.json.decode(received[1].data)["choices"][0]["delta"] == {"content": "tick"}
        assert eng.load().running == 1
        await chunks.aclose()
        assert eng.load().running == 0
        await wait_for(lambda: "slow-1" in fake.cancelled)
    finally:
        await eng.close()
    assert fake.sent < 500


@pytest.mark.parametrize("rpc", ["stream", "unary"])
async def test_abort_cancels_in_flight_generate(fake: FakeTriton, rpc: str) -> None:
    eng = await started(fake.target, "llm-slow", generate_rpc=rpc)
    try:
        task = asyncio.create_task(eng.generate(chat("slow-2", max_tokens=500)))
        await wait_for(lambda: eng.load().running == 1 and fake.requests)
        await eng.abort("other-request")
        assert eng.load().running == 1
        await eng.abort("slow-2")
        with pytest.raises(UpstreamError) as info:
            await task
        assert info.value.code == "aborted"
        await wait_for(lambda: "slow-2" in fake.cancelled)
        assert eng.load().running == 0
    finally:
        await eng.close()


async def test_health_is_cached(fake: FakeTriton) -> None:
    cached = await started(fake.target, health_cache_s=60)
    fresh = await started(fake.target, health_cache_s=0)
    try:
        assert await cached.health() is True
        checks = fake.health_checks
        fake.live = False
        assert await cached.health() is True
        assert fake.health_checks == checks
        assert await fresh.health() is False
        fake.live = True
        fake.unready.add("llm")
        assert await fresh.health() is False
        fake.unready.clear()
        assert await fresh.health() is True
    finally:
        await cached.close()
        await fresh.close()


async def test_health_false_before_start_and_when_server_is_gone(fake: FakeTriton) -> None:
    eng = make_engine(fake.target, health_cache_s=0)
    assert await eng.health() is False
    await eng.start()
    try:
        assert await eng.health() is True
        await fake.close()
        assert await eng.health() is False
    finally:
        await eng.close()


@pytest.mark.parametrize(
    "body",
    [
        {"messages": CHAT, "n": 2},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        {"messages": []},
        {"messages": CHAT, "max_tokens": "ten"},
        # Without options.structured_outputs nothing can force a call or a JSON answer.
        {"messages": CHAT, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
        {"messages": CHAT, "response_format": {"type": "json_object"}},
        {"messages": [{"role": "wizard", "content": "x"}]},
    ],
)
async def test_invalid_requests_never_reach_triton(engine: TritonEngine, fake: FakeTriton, body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        await engine.generate(EngineRequest(kind="chat", body=body, request_id="bad"))
    assert fake.requests == []


async def test_plain_template_and_content_parts(fake: FakeTriton) -> None:
    eng = await started(fake.target, chat_template="plain")
    messages = [
        {"role": "developer", "content": "Rules."},
        {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
    ]
    try:
        await eng.generate(EngineRequest(kind="chat", body={"messages": messages}, request_id="p1"))
    finally:
        await eng.close()
    assert fake.requests[0].value("text_input") == b"system: Rules.\nuser: hi there\nassistant:"
