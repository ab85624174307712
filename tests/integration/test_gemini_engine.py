"""The Gemini engine against a fake Gemini API / Vertex AI that checks every request's shape, and through the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jsonschema
import msgspec
import pytest

from core.errors import (
    GatewayError,
    InvalidRequest,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from serving.base import Engine, EngineRequest, EngineSpec, StreamChunk, Timeouts
from serving.gemini import GeminiEngine, GeminiOptions, VertexOptions
from serving.registry import ProviderError, parse_options
from tests.conftest import TEST_KEY, make_config
from tests.fakes.gemini_checks import SKIP_SIGNATURE
from tests.fakes.gemini_server import (
    API_KEY,
    EMBED_DIMS,
    LOCATION,
    OUTPUT_SAFETY_TRIGGER,
    PROJECT,
    REPLY_TEXT,
    RETRY_DELAY_S,
    SAFETY_TRIGGER,
    THOUGHT_SIGNATURE,
    TOOL_ANSWER_PREFIX,
    VERTEX_TOKEN,
    FakeGemini,
    vector,
)
from tests.integration.gateway_server import running_gateway

MODEL = "gemini-2.5-flash"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["celsius", "kelvin"]}},
    "required": ["city", "unit"],
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}}]
VERTEX_PATH = f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models"


@pytest.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    server = FakeGemini()
    await server.start()
    yield server
    await server.close()


def make_engine(fake: FakeGemini, *, api_key: str | None = API_KEY, options: GeminiOptions | None = None, **spec: Any) -> GeminiEngine:
    return GeminiEngine(
        EngineSpec(name="gem", provider="gemini", model=MODEL, base_url=fake.base_url, api_key=api_key, options=options, **spec)
    )


@pytest.fixture
async def engine(fake: FakeGemini) -> AsyncIterator[GeminiEngine]:
    eng = make_engine(fake)
    await eng.start()
    yield eng
    await eng.close()


@pytest.fixture
async def vertex(fake: FakeGemini) -> AsyncIterator[GeminiEngine]:
    eng = make_engine(fake, api_key=VERTEX_TOKEN, options=GeminiOptions(vertex=VertexOptions(project=PROJECT, location=LOCATION)))
    await eng.start()
    yield eng
    await eng.close()


def chat(*messages: dict[str, Any], model: str = MODEL, stream: bool = False, request_id: str = "req-1", **extra: Any) -> EngineRequest:
    msgs = list(messages) or [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    return EngineRequest(kind="chat", body={"model": model, "messages": msgs, **extra}, request_id=request_id, stream=stream)


async def collect(engine: GeminiEngine, request: EngineRequest) -> list[StreamChunk]:
    return [chunk async for chunk in engine.stream(request)]


def decoded(chunks: list[StreamChunk]) -> list[dict[str, Any]]:
    return [msgspec.json.decode(c.data) for c in chunks]


async def answer(engine: GeminiEngine, request: EngineRequest) -> dict[str, Any]:
    """The assistant message and finish reason, streamed or not, as a client would assemble them."""
    if not request.stream:
        choice = msgspec.json.decode((await engine.generate(request)).body)["choices"][0]
        return {**choice["message"], "finish_reason": choice["finish_reason"]}
    chunks = await collect(engine, request)
    message: dict[str, Any] = {"role": "assistant", "content": "", "finish_reason": chunks[-2].finish_reason}
    for payload in decoded(chunks):
        for choice in payload["choices"]:
            message["content"] += choice["delta"].get("content") or ""
            for call in choice["delta"].get("tool_calls", []):
                # What an SDK's stream accumulator keeps: id, name, arguments (not extra_content).
                message.setdefault("tool_calls", []).append({k: call[k] for k in ("id", "type", "function")})
    return message


async def test_generate_text_usage_and_request_shape(engine: GeminiEngine, fake: FakeGemini) -> None:
    assert isinstance(engine, Engine) and engine.provider == "gemini"
    completion = await engine.generate(chat())
    body = msgspec.json.decode(completion.body)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": REPLY_TEXT}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["id"] == "chatcmpl-fake-response-id" and body["model"] == MODEL
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.cached_tokens) == (12, 9, 4)
    [sent] = fake.requests
    assert sent.path == f"/v1beta/models/{MODEL}:generateContent" and sent.query == {}
    assert sent.headers["x-goog-api-key"] == API_KEY and "authorization" not in {k.lower() for k in sent.headers}
    assert sent.body == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}], "systemInstruction": {"parts": [{"text": "Be brief."}]}}


async def test_stream_text(engine: GeminiEngine, fake: FakeGemini) -> None:
    chunks = await collect(engine, chat(stream=True))
    payloads = decoded(chunks)
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c.text or "" for c in chunks) == REPLY_TEXT
    assert chunks[-2].finish_reason == "stop"
    last = chunks[-1]
    assert last.usage_only and payloads[-1]["choices"] == []
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens) == (12, 9)
    assert fake.requests[0].path.endswith(":streamGenerateContent") and fake.requests[0].query == {"alt": "sse"}
    assert engine.load().running == 0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", [MODEL, "gemini-3-pro-preview"])
async def test_tool_call_round_trip(engine: GeminiEngine, fake: FakeGemini, stream: bool, model: str) -> None:
    question = {"role": "user", "content": "Weather in Paris?"}
    reply = await answer(engine, chat(question, model=model, stream=stream, tools=TOOLS, tool_choice="required"))
    assert reply.pop("finish_reason") == "tool_calls"
    [call] = reply["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(msgspec.json.decode(call["function"]["arguments"]), WEATHER)
    result = {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 18}'}
    final = await answer(engine, chat(question, reply, result, model=model, stream=stream, tools=TOOLS))
    assert final["finish_reason"] == "stop"
    assert final["content"] == TOOL_ANSWER_PREFIX + '[{"name":"get_weather","response":{"temp_c":18}}]'
    replayed = fake.requests[1].body["contents"][1]["parts"][0]
    assert replayed["functionCall"]["name"] == "get_weather"
    if model.startswith("gemini-3"):
        # Kept by a client that echoes the message whole; Google's stand-in when the stream accumulator dropped it.
        assert replayed["thoughtSignature"] == (SKIP_SIGNATURE if stream else THOUGHT_SIGNATURE)


@pytest.mark.parametrize("stream", [False, True])
async def test_structured_output_is_json_valid_for_the_schema(engine: GeminiEngine, fake: FakeGemini, stream: bool) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER}}
    reply = await answer(engine, chat({"role": "user", "content": "Paris?"}, stream=stream, response_format=fmt))
    jsonschema.validate(msgspec.json.decode(reply["content"]), WEATHER)
    assert fake.requests[0].body["generationConfig"] == {"responseMimeType": "application/json", "responseJsonSchema": WEATHER}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("trigger", [SAFETY_TRIGGER, OUTPUT_SAFETY_TRIGGER])
async def test_safety_blocks_are_content_filtered_answers(engine: GeminiEngine, trigger: str, stream: bool) -> None:
    reply = await answer(engine, chat({"role": "user", "content": f"tell me about {trigger}"}, stream=stream))
    assert reply["finish_reason"] == "content_filter"
    assert reply["content"] == ""


async def test_candidates_and_max_tokens(engine: GeminiEngine) -> None:
    body = msgspec.json.decode((await engine.generate(chat(n=2, max_tokens=3))).body)
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [
        (i, " ".join(REPLY_TEXT.split()[:3]), "length") for i in range(2)
    ]


@pytest.mark.parametrize(
    ("model", "error_class", "status", "retry_after"),
    [
        ("gemini-status-400", UpstreamRejected, 400, None),
        ("gemini-status-404", UpstreamRejected, 404, None),
        ("gemini-status-429", UpstreamRateLimited, 429, 7),
        ("gemini-retry-info", UpstreamRateLimited, 429, RETRY_DELAY_S),
        ("gemini-status-500", UpstreamError, 502, None),
        ("gemini-status-503", UpstreamUnavailable, 502, None),
        ("gemini-status-504", UpstreamTimeout, 504, None),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_google_errors_map_to_gateway_errors(
    engine: GeminiEngine, model: str, error_class: type[GatewayError], status: int, retry_after: int | None, stream: bool
) -> None:
    with pytest.raises(error_class) as info:
        await (collect(engine, chat(model=model, stream=True)) if stream else engine.generate(chat(model=model)))
    assert type(info.value) is error_class and info.value.status == status
    assert info.value.retry_after == retry_after
    assert info.value.retryable == (status != 400 and status != 404)
    if error_class is UpstreamRejected:
        assert info.value.message == f"fake error for {model}"
    assert engine.load().running == 0


@pytest.mark.parametrize("api_key", ["wrong-gemini-secret-key", None])
async def test_refused_key_is_not_the_clients_fault_and_never_echoed(fake: FakeGemini, api_key: str | None) -> None:
    eng = make_engine(fake, api_key=api_key)
    await eng.start()
    try:
        for request in (chat(), chat(stream=True)):
            with pytest.raises(UpstreamUnavailable) as info:
                await (collect(eng, request) if request.stream else eng.generate(request))
            assert "wrong-gemini-secret-key" not in str(info.value) and info.value.retryable
        # Up all the same: the upstream answers, it is our key it refuses.
        assert await eng.health()
    finally:
        await eng.close()
    assert all(r.query.get("key") is None for r in fake.requests)


async def test_stream_failures(engine: GeminiEngine) -> None:
    with pytest.raises(UpstreamError, match="closed the stream early"):
        await collect(engine, chat(model="gemini-truncated", stream=True))
    received: list[StreamChunk] = []
    with pytest.raises(UpstreamError, match="UNAVAILABLE"):
        async for chunk in engine.stream(chat(model="gemini-midstream-error", stream=True)):
            received.append(chunk)
    assert received and received[-1].text


async def test_early_close_and_abort_cut_the_upstream(engine: GeminiEngine, fake: FakeGemini) -> None:
    stream = engine.stream(chat(model="gemini-endless", stream=True))
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert engine.load().running == 0
    aborted = engine.stream(chat(model="gemini-endless", stream=True, request_id="to-abort"))
    await anext(aborted)
    await engine.abort("to-abort")
    with pytest.raises(UpstreamError, match="aborted"):
        async for _ in aborted:
            pass
    async with asyncio.timeout(5):
        while fake.disconnects < 2:
            await asyncio.sleep(0.02)


async def test_slow_upstream_is_a_timeout(fake: FakeGemini) -> None:
    eng = make_engine(fake, timeouts=Timeouts(connect_s=1.0, read_s=0.2, total_s=5.0))
    await eng.start()
    try:
        with pytest.raises(UpstreamTimeout):
            await eng.generate(chat(model="gemini-slow"))
    finally:
        await eng.close()


async def test_embeddings(engine: GeminiEngine, fake: FakeGemini) -> None:
    request = EngineRequest(kind="embedding", body={"model": "gemini-embedding-001", "input": ["hello world", "bye"]}, request_id="e")
    completion = await engine.embed(request)
    body = msgspec.json.decode(completion.body)
    assert [d["embedding"] for d in body["data"]] == [vector("hello world", EMBED_DIMS), vector("bye", EMBED_DIMS)]
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}  # estimated: Google counts none
    assert fake.requests[0].path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    with pytest.raises(InvalidRequest):
        await engine.embed(EngineRequest(kind="embedding", body={"model": "gemini-embedding-001", "input": [[1, 2]]}, request_id="t"))


async def test_vertex_ai_paths_token_and_embeddings(vertex: GeminiEngine, fake: FakeGemini) -> None:
    body = msgspec.json.decode((await vertex.generate(chat())).body)
    assert body["choices"][0]["message"]["content"] == REPLY_TEXT
    assert "".join(c.text or "" for c in await collect(vertex, chat(stream=True))) == REPLY_TEXT
    request = EngineRequest(
        kind="embedding", body={"model": "text-embedding-005", "input": "one two three", "dimensions": 4}, request_id="e"
    )
    embedded = msgspec.json.decode((await vertex.embed(request)).body)
    assert embedded["data"][0]["embedding"] == vector("one two three", 4)
    assert embedded["usage"]["prompt_tokens"] == 3  # counted by Vertex
    assert [r.path for r in fake.requests] == [
        f"{VERTEX_PATH}/{MODEL}:generateContent", f"{VERTEX_PATH}/{MODEL}:streamGenerateContent",
        f"{VERTEX_PATH}/text-embedding-005:predict",
    ]  # fmt: skip
    assert all(r.headers["Authorization"] == f"Bearer {VERTEX_TOKEN}" and "x-goog-api-key" not in r.headers for r in fake.requests)
    assert await vertex.health() and fake.model_lists == 1


async def test_health_and_options(engine: GeminiEngine, fake: FakeGemini) -> None:
    for _ in range(3):
        with pytest.raises(UpstreamError):
            await engine.generate(chat(model="gemini-status-503"))
    assert await engine.health() and fake.model_lists == 1
    options = parse_options(
        "gemini", {"vertex": {"project": "p-1", "location": "global"}, "safety_settings": {"HARM_CATEGORY_HARASSMENT": "BLOCK_NONE"}}
    )
    assert isinstance(options, GeminiOptions) and options.vertex is not None
    assert (
        make_engine(fake, options=options)
        .model_url("m", "predict")
        .endswith("/v1/projects/p-1/locations/global/publishers/google/models/m:predict")
    )
    with pytest.raises(ProviderError, match="vertex"):
        parse_options("gemini", {"vertex": {"project": "p-1"}})
    with pytest.raises(ProviderError, match="unknown"):
        parse_options("gemini", {"region": "x"})
    safe = make_engine(fake, options=GeminiOptions(safety_settings={"HARM_CATEGORY_HARASSMENT": "BLOCK_ONLY_HIGH"}))
    await safe.start()
    try:
        await safe.generate(chat())
    finally:
        await safe.close()
    assert fake.requests[-1].body["safetySettings"] == [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"extra": 1}, 'Unknown name "extra"'),
        ({"generation_config": {}}, 'Unknown name "generation_config"'),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role"),
        (
            {"contents": [{"role": "user", "parts": [{"inline_data": {"mimeType": "image/png", "data": "AA=="}}]}]},
            'Unknown name "inline_data"',
        ),
        ({"contents": [{"role": "user", "parts": [{"functionResponse": {"response": {}}}]}]}, "Name cannot be empty"),
        ({"systemInstruction": {"role": "user", "parts": [{"text": "x"}]}}, "system_instruction"),
    ],
)
async def test_fake_refuses_what_google_refuses(fake: FakeGemini, change: dict[str, Any], complaint: str) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}], **change}
    async with aiohttp.ClientSession() as http:
        url = f"{fake.base_url}/v1beta/models/{MODEL}:generateContent"
        async with http.post(url, json=body, headers={"x-goog-api-key": API_KEY}) as resp:
            error = (await resp.json())["error"]
    assert (resp.status, error["status"]) == (400, "INVALID_ARGUMENT") and complaint in error["message"]


async def test_through_the_gateway_with_a_ledger_row(fake: FakeGemini, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG_TEST_GEMINI_KEY", API_KEY)
    deployment = {
        "name": "gemini-dep", "provider": "gemini", "model": MODEL, "base_url": fake.base_url,
        "api_key": {"env": "SG_TEST_GEMINI_KEY"}, "price": {"input_per_mtok": 1_000_000, "output_per_mtok": 2_000_000},
        "options": {"safety_settings": {"HARM_CATEGORY_HARASSMENT": "BLOCK_ONLY_HIGH"}},
    }  # fmt: skip
    config = make_config(fake.base_url, deployments=[deployment], models=[{"alias": "gem", "deployments": ["gemini-dep"]}])
    async with running_gateway(config) as (base, gateway), aiohttp.ClientSession() as http:
        chat_body = {"model": "gem", "messages": [{"role": "user", "content": "hello there"}]}
        async with http.post(f"{base}/v1/chat/completions", json=chat_body, headers={"authorization": f"Bearer {TEST_KEY}"}) as resp:
            assert resp.status == 200
            request_id = resp.headers["x-request-id"]
            body = await resp.json()
        assert body["choices"][0]["message"]["content"] == REPLY_TEXT
        assert body["usage"]["prompt_tokens"] == 12 and body["usage"]["completion_tokens"] == 9
        await gateway.billing.drain()
        assert gateway.ledger is not None
        await gateway.ledger.flush()
        epoch, far = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
        rows = [r for r in await gateway.ledger.rows("tenant-a", epoch, far, 10) if r.request_id == request_id]
    [row] = rows
    assert (row.provider, row.deployment, row.model, row.status) == ("gemini", "gemini-dep", "gem", 200)
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens) == (12, 9, 4)
    assert row.cost > 0
    assert fake.requests[-1].headers["x-goog-api-key"] == API_KEY
