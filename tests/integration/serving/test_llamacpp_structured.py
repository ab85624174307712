"""Structured outputs and tool calls on the in-process llama.cpp engine (SmolLM2-135M-Instruct).

JSON answers and forced calls decode under a grammar built from the schema and
are checked against it; keywords the grammar would skip are refused up front.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest
import pytest_asyncio

from core.errors import InvalidRequest
from serving.base import EngineRequest, EngineSpec, StreamChunk
from serving.llamacpp import LlamaCppEngine
from serving.llamacpp_options import LlamaCppOptions
from tests.integration.serving.structured_cases import (
    json_schema_format,
    parameters_of,
    person_schema,
    streamed_calls,
    weather_tools,
)

pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL = "smollm2-dev"
PERSON = person_schema(integer_bounds=False)
TOOLS = weather_tools(integer_bounds=False)
ASK = [{"role": "user", "content": "Describe a person called Ada, who lives in Paris, as JSON."}]
WEATHER = [{"role": "user", "content": "What's the weather in Paris for the next two days?"}]
# Free-form JSON: a question the 135M model answers briefly instead of looping on invented keys.
CAPITAL = [{"role": "user", "content": "Give the capital of France as a JSON object with the key capital."}]


def _chat(messages: list[dict[str, Any]], stream: bool = False, **fields: Any) -> EngineRequest:
    body = {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 160, **fields}
    return EngineRequest(kind="chat", body=body, request_id=uuid.uuid4().hex, stream=stream)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[LlamaCppEngine]:
    options = LlamaCppOptions(n_threads=1, tool_parser="hermes")
    started = LlamaCppEngine(EngineSpec(name="local", provider="llamacpp", model=MODEL, options=options))
    await started.start()
    yield started
    await started.close()


async def _collect(engine: LlamaCppEngine, request: EngineRequest) -> list[StreamChunk]:
    return [chunk async for chunk in engine.stream(request)]


async def _answer(engine: LlamaCppEngine, request: EngineRequest) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """(message, tool calls as {id, name, arguments}, finish reason), whole or reassembled from the stream."""
    if not request.stream:
        choice = json.loads((await engine.generate(request)).body)["choices"][0]
        message = choice["message"]
        calls = [{"id": call["id"], **call["function"]} for call in message.get("tool_calls") or []]
        return message, calls, choice["finish_reason"]
    chunks = await _collect(engine, request)
    calls, content, reasons = streamed_calls(chunks[:-1])
    assert chunks[-1].usage_only and len(reasons) == 1
    return {"content": content}, calls, reasons[0]


# --- response_format ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
@pytest.mark.parametrize("strict", [None, True])
async def test_json_schema_answer_is_valid(engine: LlamaCppEngine, stream: bool, strict: bool | None) -> None:
    request = _chat(ASK, stream, response_format=json_schema_format(PERSON, strict=strict))
    message, calls, reason = await _answer(engine, request)
    assert reason == "stop" and calls == []
    jsonschema.validate(json.loads(message["content"]), PERSON)


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
async def test_json_object_answer_is_an_object(engine: LlamaCppEngine, stream: bool) -> None:
    message, _, reason = await _answer(engine, _chat(CAPITAL, stream, response_format={"type": "json_object"}))
    assert reason == "stop"
    assert json.loads(message["content"]) == {"capital": "Paris"}


UNENFORCEABLE = {
    "minimum": {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}},
    "multipleOf": {"type": "number", "multipleOf": 5},
    "uniqueItems": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
    "email": {"type": "string", "format": "email"},
    "patternProperties": {"type": "object", "patternProperties": {"^x": {"type": "string"}}},
    "allOf": {"allOf": [{"type": "object"}, {"required": ["a"]}]},
    "remote-ref": {"$ref": "https://example.com/schema.json"},
    "maxLength+pattern": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 3},
}


@pytest.mark.parametrize("schema", list(UNENFORCEABLE.values()), ids=list(UNENFORCEABLE))
async def test_schema_the_grammar_cannot_enforce_is_a_400(engine: LlamaCppEngine, schema: dict[str, Any]) -> None:
    request = _chat(ASK, response_format=json_schema_format(schema))
    with pytest.raises(InvalidRequest) as whole:
        await engine.generate(request)
    assert whole.value.param == "response_format"
    with pytest.raises(InvalidRequest) as streamed:
        await anext(engine.stream(request))
    assert streamed.value.param == "response_format"


# --- tool calls ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
async def test_named_tool_choice_gives_a_valid_call(engine: LlamaCppEngine, stream: bool) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    message, calls, reason = await _answer(engine, _chat(WEATHER, stream, tools=TOOLS, tool_choice=choice))
    assert reason == "tool_calls" and not message["content"]
    [call] = calls
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    arguments = json.loads(call["arguments"])
    jsonschema.validate(arguments, parameters_of(TOOLS, "get_weather"))
    assert arguments["city"] == "Paris"


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
async def test_required_tool_choice_gives_a_valid_call(engine: LlamaCppEngine, stream: bool) -> None:
    request = _chat(WEATHER, stream, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    _, calls, reason = await _answer(engine, request)
    assert reason == "tool_calls"
    [call] = calls
    assert call["name"] in {"get_weather", "get_time"}
    jsonschema.validate(json.loads(call["arguments"]), parameters_of(TOOLS, call["name"]))


async def test_auto_without_a_call_is_plain_content(engine: LlamaCppEngine) -> None:
    message, calls, reason = await _answer(engine, _chat(WEATHER, tools=TOOLS, max_tokens=24))
    assert calls == [] and "tool_calls" not in message
    assert isinstance(message["content"], str) and message["content"]
    assert reason in ("stop", "length")


ARGUMENTS = {"city": "Paris", "unit": "celsius", "days": 2}
CALLED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(ARGUMENTS)}}],
}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "Sunny and 21 degrees both days."}


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
async def test_tool_round_trip_reaches_the_prompt(engine: LlamaCppEngine, stream: bool) -> None:
    async def prompt_tokens(messages: list[dict[str, Any]]) -> int:
        request = _chat(messages, stream, tools=TOOLS, max_tokens=2)
        if stream:
            usage = (await _collect(engine, request))[-1].usage
        else:
            usage = (await engine.generate(request)).usage
        assert usage is not None
        return usage.prompt_tokens

    round_trip = await prompt_tokens([*WEATHER, CALLED, RESULT])
    # SmolLM2's template renders no tool_calls: the call reaches it as Hermes text in the content.
    call_text = '<tool_call>{"name": "get_weather", "arguments": ' + json.dumps(ARGUMENTS) + "}</tool_call>"
    as_text = await prompt_tokens([*WEATHER, {"role": "assistant", "content": call_text}, RESULT])
    assert round_trip == as_text
    assert round_trip > await prompt_tokens([*WEATHER, CALLED]) > await prompt_tokens(WEATHER)
