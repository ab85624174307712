from __future__ import annotations

import asyncio
import socket
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
    UpstreamUnavailable,
)
from serving.anthropic import AnthropicEngine, AnthropicOptions
from serving.base import Engine, EngineRequest, EngineSpec, StreamChunk, Timeouts
from tests.fakes.anthropic_server import (
    API_KEY,
    REPLY_TEXT,
    TOOL_INPUT,
    TOOL_USE_ID,
    FakeAnthropic,
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic()
    await server.start()
    yield server
    await server.close()


def make_engine(base_url: str, *, api_key: str = API_KEY, **spec: Any) -> AnthropicEngine:
    return AnthropicEngine(
        EngineSpec(name="claude-dep", provider="anthropic", model="claude", base_url=base_url, api_key=api_key, **spec)
    )


@pytest.fixture
async def engine(fake: FakeAnthropic) -> AsyncIterator[AnthropicEngine]:
    eng = make_engine(fake.base_url)
    await eng.start()
    yield eng
    await eng.close()


def chat(model: str = "claude-text", *, stream: bool = False, request_id: str = "req-1", **extra: Any) -> EngineRequest:
    body = {
        "model": model,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        **extra,
    }
    return EngineRequest(kind="chat", body=body, request_id=request_id, stream=stream)


async def collect(engine: AnthropicEngine, request: EngineRequest) -> list[StreamChunk]:
    return [chunk async for chunk in engine.stream(request)]


async def test_engine_satisfies_protocol(engine: AnthropicEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.provider == "anthropic"
    assert engine.name == "claude-dep"


async def test_generate_text_and_usage(engine: AnthropicEngine, fake: FakeAnthropic) -> None:
    completion = await engine.generate(chat())
    body = msgspec.json.decode(completion.body)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": REPLY_TEXT}
    assert body["choices"][0]["finish_reason"] == "stop"
    # input 10 + cache read 4 + cache write 2
    assert body["usage"] == {
        "prompt_tokens": 16,
        "completion_tokens": 6,
        "total_tokens": 22,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.cached_tokens) == (16, 4)
    [sent] = fake.requests
    assert sent.headers["x-api-key"] == API_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.body == {
        "model": "claude-text",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_tokens": 4096,
    }


@pytest.mark.parametrize("stream", [False, True])
async def test_json_schema_output_comes_back_valid_for_the_schema(engine: AnthropicEngine, fake: FakeAnthropic, stream: bool) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 3}},
        "required": ["city", "days"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "forecast", "schema": schema, "strict": True}}
    request = chat(stream=stream, response_format=fmt)
    if stream:
        chunks = [msgspec.json.decode(c.data) async for c in engine.stream(request) if c.data]
        text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch.get("choices"))
    else:
        text = msgspec.json.decode((await engine.generate(request)).body)["choices"][0]["message"]["content"]
    answer = msgspec.json.decode(text)
    assert isinstance(answer["city"], str) and answer["days"] >= 3
    [sent] = fake.requests
    assert sent.body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


async def test_options_set_version_and_default_max_tokens(fake: FakeAnthropic) -> None:
    eng = make_engine(fake.base_url + "/v1", options=AnthropicOptions(api_version="2023-06-01", default_max_tokens=99))
    await eng.start()
    try:
        await eng.generate(chat())
    finally:
        await eng.close()
    assert fake.requests[0].body["max_tokens"] == 99


async def test_generate_returns_tool_calls(engine: AnthropicEngine) -> None:
    body = msgspec.json.decode((await engine.generate(chat("claude-tool"))).body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    [call] = choice["message"]["tool_calls"]
    assert call["id"] == TOOL_USE_ID
    assert call["function"]["name"] == "get_weather"
    assert msgspec.json.decode(call["function"]["arguments"]) == TOOL_INPUT


async def test_tool_history_and_tools_reach_anthropic_translated(engine: AnthropicEngine, fake: FakeAnthropic) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
    ]
    request = EngineRequest(
        kind="chat",
        body={"model": "claude-text", "messages": messages, "tools": tools, "tool_choice": "required"},
        request_id="r",
    )
    await engine.generate(request)
    sent = fake.requests[0].body
    assert sent["tools"] == [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}]
    assert sent["tool_choice"] == {"type": "any"}
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}],
    }
    assert sent["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18C"}],
    }


async def test_stream_text(engine: AnthropicEngine, fake: FakeAnthropic) -> None:
    chunks = await collect(engine, chat(stream=True))
    payloads = [msgspec.json.decode(c.data) for c in chunks]
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c.text for c in chunks) == REPLY_TEXT
    assert "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p["choices"]) == REPLY_TEXT
    finish = chunks[-2]
    assert finish.finish_reason == "stop"
    last = chunks[-1]
    assert last.usage_only and payloads[-1]["choices"] == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.cached_tokens) == (16, 6, 4)
    assert fake.requests[0].body["stream"] is True
    assert engine.load().running == 0


async def test_stream_tool_use(engine: AnthropicEngine) -> None:
    chunks = await collect(engine, chat("claude-tool", stream=True))
    calls = [
        call
        for chunk in chunks
        for choice in msgspec.json.decode(chunk.data)["choices"]
        for call in choice["delta"].get("tool_calls", [])
    ]
    assert calls[0]["id"] == TOOL_USE_ID and calls[0]["function"]["name"] == "get_weather"
    assert {call["index"] for call in calls} == {0}
    arguments = "".join(call["function"]["arguments"] for call in calls)
    assert msgspec.json.decode(arguments) == TOOL_INPUT
    assert chunks[-2].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("model", "error_class", "status"),
    [
        ("claude-status-400", UpstreamRejected, 400),
        ("claude-status-404", UpstreamRejected, 404),
        ("claude-status-413", UpstreamRejected, 413),
        ("claude-status-429", UpstreamRateLimited, 429),
        ("claude-status-500", UpstreamError, 502),
        ("claude-overloaded", UpstreamUnavailable, 502),
        ("claude-status-504", UpstreamTimeout, 504),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_status_errors_map_to_gateway_errors(
    engine: AnthropicEngine, model: str, error_class: type[GatewayError], status: int, stream: bool
) -> None:
    with pytest.raises(error_class) as info:
        if stream:
            await collect(engine, chat(model, stream=True))
        else:
            await engine.generate(chat(model))
    assert type(info.value) is error_class
    assert info.value.status == status
    if error_class is UpstreamRejected:
        assert info.value.message == f"fake error for {model}"
    if error_class is UpstreamRateLimited:
        assert info.value.retry_after == 7
    assert engine.load().running == 0


async def test_refused_credentials_are_not_the_clients_fault_and_key_stays_secret(fake: FakeAnthropic) -> None:
    eng = make_engine(fake.base_url, api_key="sk-ant-wrong-secret")
    await eng.start()
    try:
        with pytest.raises(UpstreamError) as info:
            await eng.generate(chat())
    finally:
        await eng.close()
    assert not isinstance(info.value, UpstreamRejected)
    assert info.value.retryable
    assert "sk-ant-wrong-secret" not in info.value.message
    assert "sk-ant-wrong-secret" not in str(info.value)


async def test_error_event_mid_stream_raises_after_first_chunks(engine: AnthropicEngine) -> None:
    received: list[StreamChunk] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in engine.stream(chat("claude-midstream-error", stream=True)):
            received.append(chunk)
    assert "overloaded_error" in info.value.message
    assert received and received[-1].text


async def test_stream_cut_before_message_stop_is_an_error(engine: AnthropicEngine) -> None:
    with pytest.raises(UpstreamError, match="closed the stream early"):
        await collect(engine, chat("claude-truncated", stream=True))


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_early_close_closes_upstream_response(engine: AnthropicEngine, fake: FakeAnthropic) -> None:
    stream = engine.stream(chat("claude-endless", stream=True))
    assert isinstance(stream, AsyncIterator)
    first = [await anext(stream) for _ in range(3)]
    assert first[-1].text
    assert engine.load().running == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert engine.load().running == 0
    await wait_for(lambda: fake.disconnects == 1)


async def test_abort_cuts_a_running_stream(engine: AnthropicEngine, fake: FakeAnthropic) -> None:
    stream = engine.stream(chat("claude-endless", stream=True, request_id="to-abort"))
    await anext(stream)
    await engine.abort("to-abort")
    with pytest.raises(UpstreamError, match="aborted"):
        async for _ in stream:
            pass
    await wait_for(lambda: fake.disconnects == 1)
    assert await engine.health()


async def test_unreachable_upstream_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    eng = make_engine(f"http://127.0.0.1:{port}")
    await eng.start()
    try:
        with pytest.raises(UpstreamConnectError):
            await eng.generate(chat())
        with pytest.raises(UpstreamConnectError):
            await collect(eng, chat(stream=True))
    finally:
        await eng.close()


async def test_slow_upstream_is_a_timeout(fake: FakeAnthropic) -> None:
    eng = make_engine(fake.base_url, timeouts=Timeouts(connect_s=1.0, read_s=0.2, total_s=5.0))
    await eng.start()
    try:
        with pytest.raises(UpstreamTimeout):
            await eng.generate(chat("claude-slow"))
    finally:
        await eng.close()


async def test_health_is_the_upstream_answering_not_how_requests_fared(
    engine: AnthropicEngine, fake: FakeAnthropic
) -> None:
    for _ in range(5):
        with pytest.raises(UpstreamError):
            await engine.generate(chat("claude-overloaded"))
    assert await engine.health()
    assert fake.model_lists == 1


async def test_client_errors_do_not_hurt_health(engine: AnthropicEngine) -> None:
    for _ in range(6):
        with pytest.raises(UpstreamRejected):
            await engine.generate(chat("claude-status-400"))
        with pytest.raises(UpstreamRateLimited):
            await engine.generate(chat("claude-status-429"))
    assert await engine.health()


async def test_not_started_engine_is_unhealthy_and_refuses(fake: FakeAnthropic) -> None:
    eng = make_engine(fake.base_url)
    assert not await eng.health()
    with pytest.raises(UpstreamConnectError):
        await eng.generate(chat())


async def test_embeddings_and_unsupported_params_are_invalid_requests(
    engine: AnthropicEngine, fake: FakeAnthropic
) -> None:
    with pytest.raises(InvalidRequest):
        await engine.embed(EngineRequest(kind="embedding", body={"model": "claude-text", "input": "x"}, request_id="e"))
    with pytest.raises(InvalidRequest) as info:
        await engine.generate(chat(n=3))
    assert info.value.param == "n"
    assert fake.requests == []


async def test_connections_are_reused(engine: AnthropicEngine, fake: FakeAnthropic) -> None:
    for _ in range(3):
        await engine.generate(chat())
    await collect(engine, chat(stream=True))
    await engine.generate(chat())
    assert len(fake.requests) == 5
    assert len({sent.peer for sent in fake.requests}) == 1
