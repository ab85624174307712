"""The fake upstream's structured outputs and tool turns: JSON its schema accepts, and text once a tool has answered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema
import msgspec
import pytest

from bench.fake_json import MAX_DEPTH, sample_json
from bench.fake_replies import reply_text, structured_reply, tool_call
from bench.fake_upstream import FakeUpstream, start_fake_upstream

Json = dict[str, Any]
USER = [{"role": "user", "content": "who?"}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 6, "maxLength": 8},
        "age": {"type": "integer", "minimum": 18, "exclusiveMaximum": 120},
        "height": {"type": "number", "exclusiveMinimum": 2, "maximum": 3},
        "email": {"anyOf": [{"type": "string", "format": "email"}, {"type": "null"}]},
        "born": {"type": "string", "format": "date-time"},
        "color": {"enum": ["red", "blue"]},
        "kind": {"const": "person"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}], "items": False},
        "address": {"$ref": "#/$defs/Address"},
        "nickname": {"type": ["string", "null"]},
        "friend": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
        "both": {"allOf": [{"$ref": "#/$defs/Address"}, {"properties": {"flat": {"type": "integer", "maximum": 0.5}}}]},
    },
    "required": ["name", "age", "height", "email", "born", "color", "kind", "tags", "pair", "address", "nickname", "friend", "both"],
    "additionalProperties": False,
    "$defs": {
        "Address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "zip": {"type": "string", "minLength": 5}},
            "required": ["street", "zip"],
        }
    },
}
TREE = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#"}}},
    "required": ["label", "children"],
}


@pytest.mark.parametrize(
    "schema",
    [PERSON, TREE, {}, {"type": "array", "items": {"type": "number"}, "maxItems": 0}, {"type": "boolean"}, {"type": "null"}],
    ids=["person", "recursive-tree", "anything", "empty-array", "boolean", "null"],
)
def test_samples_are_valid_against_their_schema(schema: Json) -> None:
    value = sample_json(schema)
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())


def test_a_recursive_schema_stops_at_the_depth_limit() -> None:
    value = sample_json(TREE)
    depth = 0
    while value["children"]:
        value = value["children"][0]
        depth += 1
    assert 0 < depth <= MAX_DEPTH


def test_json_schema_reply_is_the_sample_and_json_object_wraps_the_usual_text() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    reply = structured_reply({"response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}}, 20)
    assert reply is not None and msgspec.json.decode(reply.text) == {"city": "fake"} and reply.finish_reason == "stop"
    reply = structured_reply({"response_format": {"type": "json_object"}}, 5)
    assert reply is not None and msgspec.json.decode(reply.text) == {"text": reply_text(5)}
    assert structured_reply({"response_format": {"type": "text"}}, 5) is None
    assert structured_reply({}, 5) is None


def test_max_tokens_and_stop_cut_a_json_reply() -> None:
    cut = structured_reply({"response_format": {"type": "json_object"}, "max_tokens": 3}, 20)
    assert cut is not None and (cut.text, cut.finish_reason, cut.completion_tokens) == ('{"text":"Hello from the', "length", 3)
    stopped = structured_reply({"response_format": {"type": "json_object"}, "stop": ["fake"]}, 20)
    assert stopped is not None and (stopped.text, stopped.finish_reason) == ('{"text":"Hello from the ', "stop")


def test_a_tool_result_is_answered_with_text_unless_a_call_is_forced() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    answered = [*USER, {"role": "assistant", "tool_calls": []}, {"role": "tool", "tool_call_id": "c", "content": "ok"}]
    assert tool_call({"tools": tools, "messages": USER}) is not None
    assert tool_call({"tools": tools, "messages": answered}) is None
    assert tool_call({"tools": tools, "messages": answered, "tool_choice": "required"}) is not None
    assert tool_call({"tools": tools, "messages": answered, "tool_choice": {"type": "function", "function": {"name": "f"}}}) is not None


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    upstream = await start_fake_upstream(port=0)
    yield upstream
    await upstream.close()


async def test_the_server_answers_and_streams_schema_valid_json(fake: FakeUpstream) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
    body = {"model": "fake-model", "messages": USER, "response_format": response_format}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake.url}/chat/completions", json=body) as response:
            whole = msgspec.json.decode(await response.read())
        async with http.post(f"{fake.url}/chat/completions", json={**body, "stream": True}) as response:
            blocks = [b.removeprefix("data: ") for b in (await response.read()).decode().split("\n\n") if b]
    text = whole["choices"][0]["message"]["content"]
    jsonschema.validate(msgspec.json.decode(text), PERSON)
    assert whole["usage"]["completion_tokens"] == len(text.split())
    deltas = [msgspec.json.decode(b)["choices"][0]["delta"].get("content") or "" for b in blocks[:-1] if b != "[DONE]"]
    assert len(deltas) > 2, "a JSON reply streams in pieces"
    assert "".join(deltas) == text
