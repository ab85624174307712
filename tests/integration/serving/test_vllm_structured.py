"""Structured outputs and tool calls on the in-process vLLM engine (tiny random-weight Llama).

Random weights write noise, so only constrained decoding can make the output
valid: every JSON answer and forced call here is checked against its schema.
The session engine decodes with llguidance, compact JSON, and reads auto tool
calls with vLLM's Hermes parser.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from core.errors import InvalidRequest
from serving.base import Load
from serving.vllm_engine import VLLMEngine
from tests.integration.serving.structured_cases import (
    json_schema_format,
    parameters_of,
    person_schema,
    streamed_calls,
    weather_tools,
)
from tests.integration.serving.vllm_requests import QUESTION, chat_request, collect_chunks, template_len, wait_idle

pytestmark = pytest.mark.asyncio(loop_scope="session")

PERSON = person_schema(integer_bounds=True)
TOOLS = weather_tools(integer_bounds=True)
# Bounded schemas finish well inside this; a cut-off answer would fail the checks.
ROOM: dict[str, Any] = {"max_tokens": 300, "temperature": 0}


async def _content(engine: VLLMEngine, stream: bool, **fields: Any) -> tuple[str, str]:
    """(message content, finish reason), whole or reassembled from the stream."""
    if not stream:
        choice = json.loads((await engine.generate(chat_request(**fields))).body)["choices"][0]
        return choice["message"]["content"], choice["finish_reason"]
    calls, content, reasons = streamed_calls(await collect_chunks(engine.stream(chat_request(**fields))))
    assert calls == [] and len(reasons) == 1
    return content, reasons[0]


async def _calls(engine: VLLMEngine, stream: bool, **fields: Any) -> tuple[list[dict[str, Any]], str]:
    """(tool calls as {id, name, arguments}, finish reason), whole or reassembled from the stream."""
    if not stream:
        choice = json.loads((await engine.generate(chat_request(**fields))).body)["choices"][0]
        message = choice["message"]
        assert message["content"] is None
        calls = [{"id": c["id"], **c["function"]} for c in message["tool_calls"]]
        assert all(c["type"] == "function" for c in message["tool_calls"])
        return calls, choice["finish_reason"]
    calls, content, reasons = streamed_calls(await collect_chunks(engine.stream(chat_request(**fields))))
    assert content == "" and len(reasons) == 1
    return calls, reasons[0]


# --- response_format ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
@pytest.mark.parametrize("strict", [None, True])
async def test_json_schema_answer_is_valid(vllm_engine: VLLMEngine, stream: bool, strict: bool | None) -> None:
    fields = {"response_format": json_schema_format(PERSON, strict=strict), **ROOM}
    content, reason = await _content(vllm_engine, stream, **fields)
    assert reason == "stop"
    jsonschema.validate(json.loads(content), PERSON)


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
async def test_json_object_answer_is_an_object(vllm_engine: VLLMEngine, stream: bool) -> None:
    content, reason = await _content(vllm_engine, stream, response_format={"type": "json_object"}, **ROOM)
    assert reason == "stop"
    assert isinstance(json.loads(content), dict)


async def test_text_response_format_changes_nothing(vllm_engine: VLLMEngine) -> None:
    plain = json.loads((await vllm_engine.generate(chat_request(max_tokens=8, temperature=0))).body)
    text = json.loads((await vllm_engine.generate(chat_request(max_tokens=8, temperature=0, response_format={"type": "text"}))).body)
    assert text["choices"][0]["message"] == plain["choices"][0]["message"]


UNENFORCEABLE = [
    {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
    {"type": "string", "format": "hostname-of-mars"},
    {"not": {"type": "string"}},
    {"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}},
    {"type": "object", "dependentRequired": {"a": ["b"]}},
]


@pytest.mark.parametrize("schema", UNENFORCEABLE, ids=["uniqueItems", "format", "not", "if-then", "dependentRequired"])
async def test_schema_the_backend_cannot_enforce_is_a_400(vllm_engine: VLLMEngine, schema: dict[str, Any]) -> None:
    request = chat_request(response_format=json_schema_format(schema), max_tokens=4)
    with pytest.raises(InvalidRequest) as whole:
        await vllm_engine.generate(request)
    assert whole.value.param == "response_format"
    # Streams fail the same way, before any chunk.
    with pytest.raises(InvalidRequest) as streamed:
        await anext(vllm_engine.stream(request))
    assert streamed.value.param == "response_format"
    assert await wait_idle(vllm_engine) == Load()


async def test_completions_take_response_format_too(vllm_engine: VLLMEngine) -> None:
    from tests.integration.serving.vllm_requests import completion_request

    request = completion_request("Hello", response_format=json_schema_format(PERSON), **ROOM)
    choice = json.loads((await vllm_engine.generate(request)).body)["choices"][0]
    jsonschema.validate(json.loads(choice["text"]), PERSON)


# --- forced tool calls ----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
async def test_named_tool_choice_gives_a_valid_call(vllm_engine: VLLMEngine, stream: bool) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    calls, reason = await _calls(vllm_engine, stream, tools=TOOLS, tool_choice=choice, **ROOM)
    assert reason == "tool_calls"
    [call] = calls
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    jsonschema.validate(json.loads(call["arguments"]), parameters_of(TOOLS, "get_weather"))


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
async def test_required_tool_choice_gives_a_valid_call(vllm_engine: VLLMEngine, stream: bool) -> None:
    fields = {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False, **ROOM}
    calls, reason = await _calls(vllm_engine, stream, **fields)
    assert reason == "tool_calls"
    [call] = calls
    assert call["name"] in {"get_weather", "get_time"}
    jsonschema.validate(json.loads(call["arguments"]), parameters_of(TOOLS, call["name"]))


async def test_tool_choice_none_hides_the_tools(vllm_engine: VLLMEngine, tiny_tokenizer: Any) -> None:
    completion = await vllm_engine.generate(chat_request(tools=TOOLS, tool_choice="none", max_tokens=4))
    message = json.loads(completion.body)["choices"][0]["message"]
    assert "tool_calls" not in message and isinstance(message["content"], str)
    assert completion.usage is not None and completion.usage.prompt_tokens == template_len(tiny_tokenizer, QUESTION)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "launch"}}, "tools": TOOLS}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": "sometimes", "tools": TOOLS}, "tool_choice"),
        ({"tools": [{"type": "retrieval"}]}, "tools"),
        ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ],
)
async def test_bad_tool_fields_are_a_400(vllm_engine: VLLMEngine, fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await vllm_engine.generate(chat_request(max_tokens=2, **fields))
    assert caught.value.param == param


# --- a tool round trip -------------------------------------------------------------------------


ROUND_TRIP: list[dict[str, Any]] = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius", "days": 1}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 degrees"},
]


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
async def test_tool_round_trip_reaches_the_template(vllm_engine: VLLMEngine, tiny_tokenizer: Any, stream: bool) -> None:
    request = chat_request(messages=ROUND_TRIP, tools=TOOLS, max_tokens=4, temperature=0)
    if stream:
        chunks = await collect_chunks(vllm_engine.stream(request))
        usage = chunks[-1].usage
    else:
        usage = (await vllm_engine.generate(request)).usage
    # What the template renders when the call's arguments are an object, as chat templates expect.
    rendered = [dict(m) for m in ROUND_TRIP]
    arguments = {"city": "Paris", "unit": "celsius", "days": 1}
    rendered[1]["tool_calls"] = [{**ROUND_TRIP[1]["tool_calls"][0], "function": {"name": "get_weather", "arguments": arguments}}]
    text = tiny_tokenizer.apply_chat_template(rendered, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"' in text
    assert "<|tool|>[call_1] Sunny, 21 degrees<|end|>" in text
    assert usage is not None and usage.prompt_tokens == template_len(tiny_tokenizer, rendered, TOOLS)


async def test_round_trip_with_broken_arguments_is_a_400(vllm_engine: VLLMEngine) -> None:
    messages = [
        ROUND_TRIP[0],
        {**ROUND_TRIP[1], "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]},
    ]
    with pytest.raises(InvalidRequest) as caught:
        await vllm_engine.generate(chat_request(messages=messages, max_tokens=2))
    assert caught.value.param == "messages[1]"
    orphan = [ROUND_TRIP[0], {"role": "tool", "content": "result"}]
    with pytest.raises(InvalidRequest) as caught:
        await vllm_engine.generate(chat_request(messages=orphan, max_tokens=2))
    assert caught.value.param == "messages[1]"
