"""The fake upstream's ``/v1/responses`` speaks the Responses API as the openai SDK reads it, and records what it got."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from bench.fake_upstream import FakeUpstream, start_fake_upstream

TEXT = " ".join(["Hello from the fake upstream."] * 4)
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


class City(BaseModel):
    name: str
    population: int


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    upstream = await start_fake_upstream(port=0)
    yield upstream
    await upstream.close()


@pytest.fixture
async def sdk(fake: FakeUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=fake.url, api_key="sk-fake", max_retries=0)
    yield client
    await client.close()


async def test_a_plain_answer_with_usage(sdk: openai.AsyncOpenAI, fake: FakeUpstream) -> None:
    response = await sdk.responses.create(model="fake-model", input="say hi now", instructions="Be brief.", store=False)
    assert (response.status, response.output_text, response.model) == ("completed", TEXT, "fake-model")
    assert response.usage is not None and (response.usage.input_tokens, response.usage.output_tokens) == (5, 20)
    assert fake.requests[-1]["path"] == "/v1/responses" and fake.requests[-1]["json"]["store"] is False


async def test_the_stream_is_the_typed_events_the_sdk_accumulates(sdk: openai.AsyncOpenAI) -> None:
    async with sdk.responses.stream(
        model="fake-model", input="say hi", reasoning={"effort": "low", "summary": "auto"}, tools=[{"type": "web_search"}]
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert {"response.reasoning_summary_text.delta", "response.web_search_call.searching", "response.output_text.delta"} <= set(kinds)
    assert [item.type for item in final.output] == ["reasoning", "web_search_call", "message"]
    assert final.output_text == TEXT and final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 3


async def test_tools_structured_output_and_limits(sdk: openai.AsyncOpenAI) -> None:
    called = await sdk.responses.create(model="fake-model", input="weather?", tools=[WEATHER])  # type: ignore[list-item]
    [call] = called.output
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == '{"city":"fake"}'
    answered = await sdk.responses.create(
        model="fake-model", tools=[WEATHER],  # type: ignore[list-item]
        input=[{"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )  # fmt: skip
    assert answered.output_text == TEXT
    parsed = await sdk.responses.parse(model="fake-model", input="a city", text_format=City)
    assert isinstance(parsed.output_parsed, City)
    cut = await sdk.responses.create(
        model="fake-model", input="one two three", max_output_tokens=16, prompt_cache_key="k", extra_headers={"x-fake-chunks": "30"}
    )
    assert cut.status == "incomplete" and cut.incomplete_details is not None and cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage is not None and (cut.usage.output_tokens, cut.usage.input_tokens_details.cached_tokens) == (16, 1)


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"messages": []}, 400, "messages"),
        ({"input": "x", "max_tokens": 5}, 400, "max_tokens"),
        ({"input": "x", "stream": True, "stream_options": {"include_usage": True}}, 400, "include_usage"),
        ({"input": "x", "previous_response_id": "resp_1"}, 404, "resp_1"),
        ({"input": [{"type": "message", "id": "msg_1", "role": "user", "content": "x"}]}, 400, "input[0].id"),
        ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}], "store": False}, 400, "rs_1"),
    ],
)
async def test_what_openai_refuses_the_fake_refuses(sdk: openai.AsyncOpenAI, body: dict[str, Any], status: int, says: str) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        await sdk.post("/responses", body={"model": "fake-model", **body}, cast_to=object)
    assert info.value.status_code == status and says in info.value.message


async def test_behaviours_apply_as_for_chat(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError):
        await sdk.responses.create(model="error_503", input="x")
    stream = await sdk.responses.create(model="error_midstream", input="x", stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[-1] == "error"
    no_usage = await sdk.responses.create(model="no_usage", input="x")
    assert no_usage.usage is None
