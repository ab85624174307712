"""HTTP engines serving kind ``responses``: the Responses API's usage, events and failures, against the fake upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from bench.fake_upstream import FakeUpstream, start_fake_upstream
from core.errors import UpstreamError, UpstreamUnavailable
from serving.azure import AzureOpenAIEngine, AzureOptions
from serving.base import EngineRequest, EngineSpec, StreamChunk
from serving.openai_http import OpenAIEngine, OpenAIOptions
from serving.openai_responses import peek_event, response_chunks, response_usage
from serving.sse import UpstreamStreamError

INPUT = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "say hi now"}]}]


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    upstream = await start_fake_upstream(port=0)
    yield upstream
    await upstream.close()


async def engine(fake: FakeUpstream, model: str = "fake-normal") -> OpenAIEngine:
    spec = EngineSpec(
        name="up", provider="openai", model=model, base_url=fake.url, api_key="sk-up", options=OpenAIOptions(responses="native")
    )
    started = OpenAIEngine(spec)
    await started.start()
    return started


def request(stream: bool = False, **body: Any) -> EngineRequest:
    return EngineRequest(
        kind="responses", body={"model": "fake-normal", "input": INPUT, "store": False, **body}, request_id="r", stream=stream
    )


async def collect(chunks: AsyncIterator[StreamChunk]) -> list[StreamChunk]:
    return [chunk async for chunk in chunks]


# --- pure pieces ---------------------------------------------------------------------------


def test_usage_of_a_response_in_the_gateways_terms() -> None:
    body = {"object": "response", "usage": {"input_tokens": 7, "output_tokens": 5, "input_tokens_details": {"cached_tokens": 4}}}
    usage = response_usage(msgspec.json.encode(body))
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cached_tokens) == (7, 5, 12, 4)
    assert response_usage(b'{"object": "response", "usage": null}') is None
    with pytest.raises(msgspec.ValidationError):
        response_usage(b'{"object": "chat.completion", "choices": []}')


def test_events_give_their_text_usage_end_and_failure() -> None:
    chunk, end = peek_event(b'{"type":"response.output_text.delta","delta":"Hi","sequence_number":4}')
    assert (chunk.text, chunk.usage, end) == ("Hi", None, False)
    chunk, end = peek_event(b'{"type":"response.output_item.added","item":{"type":"message","content":[]}}')
    assert (chunk.text, end) == ("", False)
    done = b'{"type":"response.incomplete","response":{"usage":{"input_tokens":2,"output_tokens":3}}}'
    chunk, end = peek_event(done)
    assert end and chunk.usage is not None and chunk.usage.completion_tokens == 3 and chunk.data == done
    with pytest.raises(UpstreamStreamError, match="overloaded"):
        peek_event(b'{"type":"error","code":"server_error","message":"overloaded"}')
    with pytest.raises(UpstreamStreamError, match="quota"):
        peek_event(b'{"type":"response.failed","response":{"error":{"code":"x","message":"quota"}}}')


async def test_a_stream_ends_at_its_terminal_event_and_not_before() -> None:
    async def reads(*parts: bytes) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    created = b'event: response.created\ndata: {"type":"response.created"}\n\n'
    completed = (
        b'event: response.completed\ndata: {"type":"response.completed",'
        b'"response":{"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
    )
    chunks = await collect(response_chunks(reads(created, completed, b"event: x\ndata: {}\n\n")))
    assert len(chunks) == 2 and chunks[-1].usage is not None and chunks[-1].batch_end
    with pytest.raises(EOFError):
        await collect(response_chunks(reads(created)))


# --- the engine ------------------------------------------------------------------------------


async def test_a_unary_response_is_posted_to_the_responses_path_as_it_is(fake: FakeUpstream) -> None:
    up = await engine(fake)
    try:
        completion = await up.generate(request(reasoning={"effort": "low"}))
    finally:
        await up.close()
    seen = fake.requests[-1]
    assert (seen["path"], seen["headers"]["authorization"], seen["json"]["reasoning"]) == (
        "/v1/responses",
        "Bearer sk-up",
        {"effort": "low"},
    )
    assert msgspec.json.decode(completion.body)["object"] == "response"
    # The fake's words: the answer's 20 and the reasoning summary's 3.
    assert completion.usage is not None and (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 23)


async def test_a_stream_relays_every_event_and_its_usage(fake: FakeUpstream) -> None:
    up = await engine(fake)
    try:
        chunks = await collect(up.stream(request(stream=True)))
    finally:
        await up.close()
    assert "stream_options" not in fake.requests[-1]["json"] and fake.requests[-1]["json"]["stream"] is True
    kinds = [msgspec.json.decode(c.data)["type"] for c in chunks]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "".join(c.text or "" for c in chunks) == " ".join(["Hello from the fake upstream."] * 4)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20


@pytest.mark.parametrize(
    ("model", "error"), [("error_midstream", "failed mid-stream"), ("disconnect_midstream", "closed the (stream|connection) early")]
)
async def test_a_stream_failing_midway_is_an_upstream_error(fake: FakeUpstream, model: str, error: str) -> None:
    up = await engine(fake, model)
    try:
        with pytest.raises(UpstreamError, match=error):
            await collect(up.stream(request(stream=True, model=model)))
    finally:
        await up.close()


async def test_an_error_status_maps_as_for_chat(fake: FakeUpstream) -> None:
    up = await engine(fake, "error_503")
    try:
        with pytest.raises(UpstreamUnavailable):
            await up.generate(request(model="error_503"))
    finally:
        await up.close()


async def test_azure_serves_responses_at_its_v1_path_with_its_deployment_as_model(fake: FakeUpstream) -> None:
    options = AzureOptions(responses="native", deployment="my-gpt", responses_api_version="preview")
    spec = EngineSpec(name="az", provider="azure", model="gpt-x", base_url=fake.url.removesuffix("/v1"), api_key="az-key", options=options)
    up = AzureOpenAIEngine(spec)
    await up.start()
    try:
        await up.generate(request())
        chunks = await collect(up.stream(request(stream=True)))
    finally:
        await up.close()
    unary, streamed = list(fake.requests)[-2:]
    assert (unary["path"], unary["query"], unary["json"]["model"], unary["headers"]["api-key"]) == (
        "/openai/v1/responses", {"api-version": "preview"}, "my-gpt", "az-key"
    )
    assert streamed["json"]["model"] == "my-gpt" and chunks[-1].usage is not None
