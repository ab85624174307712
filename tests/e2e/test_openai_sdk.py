"""The official OpenAI SDK, sync and async, against the running gateway."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

# What the fake answers by default: 20 words cycling through five.
EXPECTED_TEXT = " ".join(["Hello from the fake upstream."] * 4)
EXPECTED_WORDS = 20
USER = [{"role": "user", "content": "Say hello please"}]
ALIASES = {
    "fake-model", "embed-model", "slow-model", "broken", "overloaded", "midstream", "disconnect",
    "fallback", "ratelimited", "rejects", "timeout-model", "unreachable",
}
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMS}}

ErrorCheck = Callable[..., dict[str, Any]]


def test_chat_non_stream(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="fake-model", messages=USER)
    assert reply.object == "chat.completion" and len(reply.choices) == 1
    choice = reply.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", EXPECTED_TEXT, "stop")
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (3, 20, 23)


def test_chat_max_tokens_finish_length(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="fake-model", messages=USER, max_tokens=3)
    assert reply.choices[0].message.content == "Hello from the"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_chat_stream_without_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="fake-model", messages=USER, stream=True))
    assert chunks, "no chunks"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.usage is None and len(c.choices) == 1 for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == EXPECTED_TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1


async def test_chat_stream_with_usage_async(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model="fake-model", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, EXPECTED_WORDS)
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == EXPECTED_TEXT


def test_tools_pass_through(client: openai.OpenAI) -> None:
    tools = [WEATHER_TOOL]
    reply = client.chat.completions.create(model="fake-model", messages=USER, tools=tools)  # type: ignore[arg-type]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    function = calls[0].function  # type: ignore[union-attr]
    assert (calls[0].type, function.name, function.arguments) == ("function", "get_weather", '{"city":"fake","days":1}')


async def test_tools_stream_async(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model="fake-model", messages=USER, tools=[WEATHER_TOOL], stream=True  # type: ignore[list-item]
    )
    chunks = [chunk async for chunk in stream]
    calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function is not None and calls[0].function.name == "get_weather"
    arguments = "".join((call.function.arguments or "") for call in calls if call.function is not None)
    assert arguments == '{"city":"fake","days":1}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


Recorded = Callable[[str], list[dict[str, Any]]]


def test_extra_params_reach_upstream(
    client: openai.OpenAI, upstream_requests: Recorded, api_key: str, upstream_key: str
) -> None:
    marker = "marker-" + secrets.token_hex(8)
    reply = client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": f"hello {marker}"}],
        response_format={"type": "json_object"}, seed=7, n=1, stop=["upstream."], logprobs=True, top_logprobs=2,
        extra_body={"custom_sampler": {"k": 3}},
    )
    # The fake answers JSON mode with a JSON object and applies `stop`, so the
    # text proves both parameters took effect upstream.
    assert reply.choices[0].message.content == '{"text":"Hello from the fake '
    [seen] = upstream_requests(marker)
    body = seen["json"]
    assert body["model"] == "fake-normal", "the alias must become the deployment's model name"
    assert body["response_format"] == {"type": "json_object"}
    assert (body["seed"], body["n"], body["stop"]) == (7, 1, ["upstream."])
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)
    assert body["custom_sampler"] == {"k": 3}, "unknown fields are passed through"
    assert seen["headers"].get("authorization") == f"Bearer {upstream_key}"
    assert all(api_key not in value for value in seen["headers"].values())


def test_completions_non_stream(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="fake-model", prompt="Say hello")
    assert reply.object == "text_completion"
    assert reply.choices[0].text == EXPECTED_TEXT
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (2, EXPECTED_WORDS)


async def test_completions_stream_async(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.completions.create(
        model="fake-model", prompt="Say hello", stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == EXPECTED_TEXT
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == EXPECTED_WORDS


@pytest.mark.parametrize("encoding", ["float", None], ids=["float", "sdk-default-base64"])
def test_embeddings(client: openai.OpenAI, encoding: str | None) -> None:
    # Without an explicit format the SDK asks for base64 and decodes it itself.
    extra: dict[str, Any] = {"encoding_format": encoding} if encoding else {}
    reply = client.embeddings.create(model="embed-model", input=["one two", "three"], **extra)
    assert reply.object == "list"
    assert [d.index for d in reply.data] == [0, 1]
    for item in reply.data:
        assert len(item.embedding) == 8
        assert all(isinstance(x, float) and -1.0 <= x <= 1.0 for x in item.embedding)
    assert reply.data[0].embedding != reply.data[1].embedding
    assert (reply.usage.prompt_tokens, reply.usage.total_tokens) == (3, 3)


async def test_embeddings_same_in_both_encodings_async(aclient: openai.AsyncOpenAI) -> None:
    as_float = await aclient.embeddings.create(model="embed-model", input="same text", encoding_format="float")
    packed = await aclient.embeddings.create(model="embed-model", input="same text")
    assert packed.data[0].embedding == pytest.approx(as_float.data[0].embedding, abs=1e-6)


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert {m.id for m in models.data} == ALIASES
    assert all(m.object == "model" and m.owned_by for m in models.data)
    model = client.models.retrieve("fake-model")
    assert (model.id, model.object) == ("fake-model", "model")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# --- errors surface as typed SDK exceptions ----------------------------------


def test_bad_key(gateway: Any, assert_openai_error: ErrorCheck) -> None:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as info:
            wrong.chat.completions.create(model="fake-model", messages=USER)
        assert_openai_error(info.value.response, 401)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()


def test_unknown_model(client: openai.OpenAI, assert_openai_error: ErrorCheck) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=USER)
    error = assert_openai_error(info.value.response, 404)
    assert error["code"] == "model_not_found"
    assert "no-such-model" in error["message"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"messages": USER, "temperature": 5}, "temperature"),
        ({"messages": []}, "messages"),
        ({"messages": USER, "n": 0}, "n"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ],
)
def test_invalid_params(
    client: openai.OpenAI, assert_openai_error: ErrorCheck, params: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fake-model", **params)
    error = assert_openai_error(info.value.response, 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


UPSTREAM_FAILURES = [
    ("broken", openai.InternalServerError, 502),
    ("timeout-model", openai.InternalServerError, 504),
    ("unreachable", openai.InternalServerError, 502),
    ("overloaded", openai.InternalServerError, 502),
    ("rejects", openai.BadRequestError, 400),
]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize(("alias", "exc_type", "status"), UPSTREAM_FAILURES)
def test_upstream_failures(
    client: openai.OpenAI,
    assert_openai_error: ErrorCheck,
    alias: str,
    exc_type: type[openai.APIStatusError],
    status: int,
    stream: bool,
) -> None:
    # A failure before the first byte is a plain HTTP error, streaming or not.
    with pytest.raises(exc_type) as info:
        client.chat.completions.create(model=alias, messages=USER, stream=stream)
    assert_openai_error(info.value.response, status)


def test_rate_limit_relayed_then_cooled_down(
    client: openai.OpenAI, assert_openai_error: ErrorCheck, upstream_requests: Recorded
) -> None:
    marker = "limited-" + secrets.token_hex(6)
    messages = [{"role": "user", "content": marker}]
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="ratelimited", messages=messages)  # type: ignore[arg-type]
    assert_openai_error(info.value.response, 429)
    assert info.value.response.headers.get("retry-after") == "1"
    assert len(upstream_requests(marker)) == 1, "a Retry-After above max_retry_after_s is not waited out"
    # Within the upstream's Retry-After the deployment is not asked again.
    with pytest.raises(openai.APIStatusError) as again:
        client.chat.completions.create(model="ratelimited", messages=messages, stream=True)  # type: ignore[arg-type]
    assert again.value.status_code == 429
    assert_openai_error(again.value.response, again.value.status_code)
    assert again.value.response.headers.get("retry-after") == "1"
    assert len(upstream_requests(marker)) == 1
    time.sleep(1.1)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="ratelimited", messages=messages, stream=True)  # type: ignore[arg-type]
    assert len(upstream_requests(marker)) == 2


def test_fallback_to_second_deployment(client: openai.OpenAI, upstream_requests: Recorded) -> None:
    marker = "fallback-" + secrets.token_hex(6)
    raw = client.chat.completions.with_raw_response.create(
        model="fallback", messages=[{"role": "user", "content": marker}]
    )
    assert raw.status_code == 200
    assert raw.headers["x-sluicegate-deployment"] == "fake-second"
    assert raw.parse().choices[0].message.content == EXPECTED_TEXT
    assert [r["json"]["model"] for r in upstream_requests(marker)] == ["error_503", "fake-model"]


async def test_fallback_stream_async(aclient: openai.AsyncOpenAI) -> None:
    raw = await aclient.chat.completions.with_raw_response.create(model="fallback", messages=USER, stream=True)
    assert raw.headers["x-sluicegate-deployment"] == "fake-second"
    stream = raw.parse()
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == EXPECTED_TEXT


@pytest.mark.parametrize("alias", ["midstream", "disconnect"])
def test_failure_after_first_byte_raises_while_iterating(client: openai.OpenAI, alias: str) -> None:
    received: list[str] = []
    stream = client.chat.completions.create(model=alias, messages=USER, stream=True)
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert received, "the failure must come after some chunks"
    assert not isinstance(info.value, openai.APIStatusError), "the HTTP status was already 200"


async def test_midstream_async(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(model="midstream", messages=USER, stream=True)
    received = 0
    with pytest.raises(openai.APIError):
        async for _ in stream:
            received += 1
    assert received >= 1


async def test_upstream_failure_async(aclient: openai.AsyncOpenAI, assert_openai_error: ErrorCheck) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        await aclient.completions.create(model="broken", prompt="x")
    error = assert_openai_error(info.value.response, 502)
    assert error["type"] == "upstream_error"
