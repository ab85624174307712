"""The fake upstream speaks the OpenAI wire format and misbehaves on request."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from bench.fake_replies import behavior_of, reply_text
from bench.fake_upstream import FakeUpstream, start_fake_upstream

Json = dict[str, Any]
HI = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hi now"}]


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    upstream = await start_fake_upstream(port=0)
    yield upstream
    await upstream.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession, url: str, body: Json, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Json]:
    async with http.post(url, json=body, headers=headers) as response:
        return response.status, dict(response.headers), msgspec.json.decode(await response.read())


async def events(http: aiohttp.ClientSession, url: str, body: Json, headers: dict[str, str] | None = None) -> list[str]:
    """The ``data:`` payloads of a streamed answer, in order."""
    async with http.post(url, json=body, headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = (await response.read()).decode()
    blocks = [b for b in text.split("\n\n") if b]
    assert all(b.startswith("data: ") for b in blocks)
    return [b.removeprefix("data: ") for b in blocks]


def chat(**extra: Any) -> Json:
    return {"model": "fake-model", "messages": HI, **extra}


async def test_chat_non_stream_has_openai_shape_and_usage(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, _, body = await call(http, f"{fake.url}/chat/completions", chat(model="my-model"))
    assert status == 200
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["object"] == "chat.completion" and body["model"] == "my-model"
    assert isinstance(body["created"], int) and body["id"].startswith("chatcmpl-")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": reply_text(20)},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25}


async def test_chat_stream_sends_one_word_per_chunk_then_usage_and_done(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = chat(stream=True, stream_options={"include_usage": True})
    data = await events(http, f"{fake.url}/chat/completions", body, {"x-fake-chunks": "5"})
    assert data[-1] == "[DONE]"
    chunks = [msgspec.json.decode(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert len(words) == 5 and "".join(words) == reply_text(5)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}


async def test_stream_without_include_usage_sends_no_usage(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    data = await events(http, f"{fake.url}/chat/completions", chat(stream=True))
    chunks = [msgspec.json.decode(d) for d in data[:-1]]
    assert len(chunks) == 22  # role, 20 words, finish
    assert all("usage" not in c and c["choices"] for c in chunks)


async def test_max_tokens_cuts_with_finish_reason_length(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    _, _, body = await call(http, f"{fake.url}/chat/completions", chat(max_tokens=3))
    assert body["choices"][0]["message"]["content"] == "Hello from the"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    data = await events(http, f"{fake.url}/chat/completions", chat(max_tokens=3, stream=True))
    chunks = [msgspec.json.decode(d) for d in data[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello from the"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_stop_string_truncates(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    _, _, body = await call(http, f"{fake.url}/chat/completions", chat(stop=["nowhere", "fake"]))
    assert body["choices"][0]["message"]["content"] == "Hello from the "
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 3


async def test_tools_are_echoed_as_a_tool_call(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    params = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": params}}]
    _, _, body = await call(http, f"{fake.url}/chat/completions", chat(tools=tools))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call_ = choice["message"]["tool_calls"][0]
    assert call_["function"] == {"name": "get_weather", "arguments": '{"city":"fake"}'}
    _, _, plain = await call(http, f"{fake.url}/chat/completions", chat(tools=tools, tool_choice="none"))
    assert plain["choices"][0]["message"]["content"] == reply_text(20)


async def test_completions_non_stream_and_stream(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {"model": "fake-model", "prompt": "one two three", "max_tokens": 4}
    _, _, answer = await call(http, f"{fake.url}/completions", body)
    assert answer["object"] == "text_completion"
    assert answer["choices"][0]["text"] == reply_text(4)
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    data = await events(http, f"{fake.url}/completions", stream_body)
    chunks = [msgspec.json.decode(d) for d in data[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == reply_text(4)
    assert chunks[-1]["usage"]["completion_tokens"] == 4


async def test_embeddings_are_deterministic_per_input(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {"model": "emb", "input": ["alpha beta", "gamma"]}
    _, _, first = await call(http, f"{fake.url}/embeddings", body)
    _, _, again = await call(http, f"{fake.url}/embeddings", body)
    assert first == again
    vectors = [d["embedding"] for d in first["data"]]
    assert [d["index"] for d in first["data"]] == [0, 1]
    assert len(vectors) == 2 and all(len(v) == 8 for v in vectors) and vectors[0] != vectors[1]
    assert all(-1.0 <= x <= 1.0 for v in vectors for x in v)
    assert first["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    _, _, packed = await call(http, f"{fake.url}/embeddings", {**body, "encoding_format": "base64"})
    assert len(base64.b64decode(packed["data"][0]["embedding"])) == 8 * 4


async def test_models_lists_the_behaviour_models(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{fake.url}/models") as response:
        body = await response.json()
    ids = {m["id"] for m in body["data"]}
    assert body["object"] == "list"
    assert {"fake-model", "fake-slow", "fake-error_503", "fake-disconnect_midstream"} <= ids


async def test_error_429_has_retry_after(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, headers, body = await call(http, f"{fake.url}/chat/completions", chat(model="fake-error_429"))
    assert status == 429 and headers["Retry-After"] == "1"
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert set(body["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("behavior", "status", "kind"),
    [
        ("error_400", 400, "invalid_request_error"),
        ("error_401", 401, "invalid_request_error"),
        ("error_500", 500, "server_error"),
        ("error_503", 503, "server_error"),
    ],
)
async def test_error_behaviours_by_header(
    fake: FakeUpstream, http: aiohttp.ClientSession, behavior: str, status: int, kind: str
) -> None:
    got, _, body = await call(http, f"{fake.url}/chat/completions", chat(), {"x-fake-behavior": behavior})
    assert got == status and body["error"]["type"] == kind


async def test_header_wins_over_model_name(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, _, _ = await call(
        http, f"{fake.url}/chat/completions", chat(model="error_503"), {"x-fake-behavior": "normal"}
    )
    assert status == 200
    assert behavior_of("error_503", None) == "error_503"
    assert behavior_of("gpt-4o", None) == "normal"


async def test_midstream_error_event_ends_the_stream(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    data = await events(http, f"{fake.url}/chat/completions", chat(model="fake-error_midstream", stream=True))
    assert "[DONE]" not in data
    assert msgspec.json.decode(data[-1])["error"]["type"] == "server_error"
    assert any("content" in c for c in data[:-1])
    status, _, _ = await call(http, f"{fake.url}/chat/completions", chat(model="fake-error_midstream"))
    assert status == 500


async def test_disconnect_midstream_breaks_the_payload(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    lines: list[bytes] = []
    async with http.post(
        f"{fake.url}/chat/completions", json=chat(model="fake-disconnect_midstream", stream=True)
    ) as r:
        with pytest.raises(aiohttp.ClientPayloadError):
            async for line in r.content:
                lines.append(line)
    assert any(line.startswith(b"data: {") for line in lines)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, f"{fake.url}/chat/completions", chat(model="fake-disconnect_midstream"))


async def test_no_usage_anywhere(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = chat(model="fake-no_usage", stream=True, stream_options={"include_usage": True})
    data = await events(http, f"{fake.url}/chat/completions", body)
    assert data[-1] == "[DONE]"
    assert all("usage" not in msgspec.json.decode(d) for d in data[:-1])
    _, _, plain = await call(http, f"{fake.url}/chat/completions", chat(model="fake-no_usage"))
    assert "usage" not in plain and plain["choices"][0]["message"]["content"]


async def test_slow_waits_before_answering(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    status, _, _ = await call(http, f"{fake.url}/chat/completions", chat(model="fake-slow"), {"x-fake-delay-ms": "300"})
    assert status == 200 and time.monotonic() - started >= 0.3


async def test_huge_answer_is_megabytes(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    _, _, body = await call(http, f"{fake.url}/chat/completions", chat(model="huge"))
    assert len(body["choices"][0]["message"]["content"]) >= 5_000_000


async def test_invalid_json_gets_openai_400(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{fake.url}/chat/completions", data=b"{not json") as response:
        assert response.status == 400
        assert (await response.json())["error"]["type"] == "invalid_request_error"


async def test_requests_are_recorded_with_authorization(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": "Bearer sk-upstream-key"}
    await call(http, f"{fake.url}/chat/completions", chat(), headers)
    recorded = fake.requests[-1]
    assert recorded["path"] == "/v1/chat/completions"
    assert recorded["headers"]["authorization"] == "Bearer sk-upstream-key"
    assert recorded["json"] == chat()
    root = fake.url.removesuffix("/v1")
    async with http.get(f"{root}/_fake/requests") as response:
        assert (await response.json())[-1]["headers"]["authorization"] == "Bearer sk-upstream-key"
    async with http.delete(f"{root}/_fake/requests") as response:
        assert response.status == 204
    assert len(fake.requests) == 0


async def test_the_behaviour_override_is_set_read_and_cleared_over_http(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    control = fake.url.removesuffix("/v1") + "/_fake/behavior"
    async with http.post(control, json={"behavior": "nonsense"}) as r:
        assert r.status == 400
    async with http.post(control, json={"behavior": "error_500"}) as r:
        assert r.status == 200
    async with http.get(control) as r:
        assert (await r.json())["behavior"] == "error_500"
    status, _, _ = await call(http, f"{fake.url}/chat/completions", chat())
    assert status == 500
    # a request's own header still wins over the override
    status, _, _ = await call(http, f"{fake.url}/chat/completions", chat(), {"x-fake-behavior": "normal"})
    assert status == 200
    async with http.delete(control) as r:
        assert r.status in (200, 204)
    status, _, _ = await call(http, f"{fake.url}/chat/completions", chat())
    assert status == 200
