"""response_format and tools/tool_choice --> engine constraints (serving.structured_outputs)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from core.errors import InvalidRequest
from serving.structured_outputs import (
    JsonConstraint,
    forced_call_schema,
    response_constraint,
    template_tool_calls,
    tool_plan,
)

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def _tool(name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


WEATHER = _tool("weather", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
TIME = _tool("time")


# --- response_format -----------------------------------------------------------------


def test_response_formats_become_constraints() -> None:
    assert response_constraint({}) is None
    assert response_constraint({"response_format": {"type": "text"}}) is None
    assert response_constraint({"response_format": {"type": "json_object"}}) == JsonConstraint(None, "response_format")
    spec = {"name": "n", "schema": SCHEMA, "strict": True}
    assert response_constraint({"response_format": {"type": "json_schema", "json_schema": spec}}) == JsonConstraint(
        SCHEMA, "response_format"
    )


@pytest.mark.parametrize(
    "response_format",
    [
        "json",
        {"type": "yaml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"schema": SCHEMA}},
        {"type": "json_schema", "json_schema": {"name": "n"}},
        {"type": "json_schema", "json_schema": {"name": "n", "schema": "{}"}},
        {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA, "strict": "yes"}},
    ],
)
def test_bad_response_format_is_a_400(response_format: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        response_constraint({"response_format": response_format})
    assert caught.value.param == "response_format"


# --- tool_choice --------------------------------------------------------------------------


def test_tool_choices_become_plans() -> None:
    assert tool_plan({}) is None
    assert tool_plan({"tools": [], "tool_choice": "auto"}) is None
    auto = tool_plan({"tools": [WEATHER, TIME]})
    assert auto is not None and (auto.mode, auto.names, auto.parallel) == ("auto", ("weather", "time"), True)
    none = tool_plan({"tools": [WEATHER], "tool_choice": "none"})
    assert none is not None and none.mode == "none"
    required = tool_plan({"tools": [WEATHER, TIME], "tool_choice": "required", "parallel_tool_calls": False})
    assert required is not None and (required.mode, required.names, required.parallel) == ("forced", ("weather", "time"), False)
    named = tool_plan({"tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "time"}}})
    assert named is not None and (named.mode, named.names, named.parallel) == ("forced", ("time",), False)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "time"}}}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice"),
        ({"tools": {"weather": WEATHER}}, "tools"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools"),
        ({"tools": [_tool("")]}, "tools"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]}, "tools"),
        ({"tools": [WEATHER], "parallel_tool_calls": 1}, "parallel_tool_calls"),
    ],
)
def test_bad_tool_fields_are_a_400(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        tool_plan(body)
    assert caught.value.param == param


# --- the forced-call schema ---------------------------------------------------------------------


def _schema(body: dict[str, Any]) -> dict[str, Any]:
    plan = tool_plan(body)
    assert plan is not None
    return forced_call_schema(plan)


def test_required_schema_accepts_calls_to_any_tool() -> None:
    schema = _schema({"tools": [WEATHER, TIME], "tool_choice": "required"})
    jsonschema.validate([{"name": "weather", "arguments": {"city": "Paris"}}, {"name": "time", "arguments": {}}], schema)
    wrongs: list[list[dict[str, Any]]] = [
        [],
        [{"name": "launch", "arguments": {}}],
        [{"name": "weather", "arguments": {}}],
        [{"arguments": {}}],
    ]
    for wrong in wrongs:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)
    # The name comes first, so a stream can announce a call before its arguments.
    assert list(schema["items"]["anyOf"][0]["properties"]) == ["name", "arguments"]


def test_named_or_serial_schema_allows_one_call() -> None:
    named = _schema({"tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "weather"}}})
    jsonschema.validate([{"name": "weather", "arguments": {"city": "Paris"}}], named)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "time", "arguments": {}}], named)
    serial = _schema({"tools": [WEATHER, TIME], "tool_choice": "required", "parallel_tool_calls": False})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "time", "arguments": {}}] * 2, serial)


def test_tool_definitions_move_to_the_root() -> None:
    parameters = {
        "type": "object",
        "properties": {"at": {"$ref": "#/$defs/place"}},
        "required": ["at"],
        "$defs": {"place": {"enum": ["home", "work"]}},
    }
    tools = [_tool("go", parameters), _tool("stay", {**parameters})]
    schema = _schema({"tools": tools, "tool_choice": "required"})
    assert schema["$defs"] == {"place": {"enum": ["home", "work"]}}
    jsonschema.validate([{"name": "go", "arguments": {"at": "home"}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "go", "arguments": {"at": "moon"}}], schema)
    # The caller's tools are left as they were.
    assert "$defs" in tools[0]["function"]["parameters"]
    clash = {**parameters, "$defs": {"place": {"type": "string"}}}
    with pytest.raises(InvalidRequest) as caught:
        _schema({"tools": [_tool("go", parameters), _tool("stay", clash)], "tool_choice": "required"})
    assert caught.value.param == "tools"


# --- assistant tool calls for the template -------------------------------------------------------


def test_template_tool_calls_parse_arguments() -> None:
    message = {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]}
    [call] = template_tool_calls(message, "messages[1]") or []
    assert call == {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    assert template_tool_calls({"role": "user", "content": "hi"}, "messages[0]") is None
    empty = {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": ""}}]}
    assert (template_tool_calls(empty, "m") or [])[0]["function"]["arguments"] == {}


@pytest.mark.parametrize(
    "calls",
    [
        "f()",
        [{"function": {"arguments": "{}"}}],
        [{"function": {"name": "f", "arguments": "{x"}}],
        [{"function": {"name": "f", "arguments": "[1]"}}],
    ],
)
def test_bad_template_tool_calls_are_a_400(calls: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        template_tool_calls({"role": "assistant", "tool_calls": calls}, "messages[2]")
    assert caught.value.param == "messages[2]"
