"""JSON schemas llama.cpp's grammar can and cannot enforce (serving.llamacpp_grammar)."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import InvalidRequest
from serving.llamacpp_grammar import check_schema, json_grammar
from serving.structured_outputs import JsonConstraint, forced_call_schema, tool_plan

ENFORCEABLE: dict[str, dict[str, Any]] = {
    "nested": {
        "type": "object",
        "title": "Person",
        "properties": {
            "name": {"type": "string", "maxLength": 12, "description": "given name"},
            "age": {"type": "integer"},
            "member": {"type": "boolean"},
            "color": {"enum": ["red", "green"]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
            "home": {"$ref": "#/$defs/place"},
            "born": {"type": "string", "format": "date"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "maybe": {"type": ["string", "null"]},
            "either": {"anyOf": [{"type": "integer"}, {"const": "none"}]},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
        "$defs": {"place": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    },
    "tuple": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
    "free map": {"type": "object", "additionalProperties": {"type": "number"}},
}
RECURSIVE: dict[str, Any] = {
    "$ref": "#/$defs/node",
    "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}},
}

UNENFORCEABLE: dict[str, tuple[dict[str, Any], str]] = {
    "minimum": ({"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}}, "'minimum' at #/properties/age"),
    "exclusiveMaximum": ({"type": "number", "exclusiveMaximum": 1}, "'exclusiveMaximum' at #"),
    "uniqueItems": ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "'uniqueItems'"),
    "tuple bounds": ({"type": "array", "prefixItems": [{"type": "integer"}], "minItems": 1}, "'minItems'"),
    "email": ({"type": "string", "format": "email"}, "format 'email'"),
    "patternProperties": ({"type": "object", "patternProperties": {"^x": {}}}, "'patternProperties'"),
    "allOf": ({"allOf": [{"type": "object"}]}, "'allOf'"),
    "not": ({"not": {"type": "string"}}, "'not'"),
    "pattern and length": ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "'maxLength'"),
    "union and bound": ({"type": ["string", "null"], "maxLength": 3}, "'maxLength'"),
    "anyOf beside properties": ({"type": "object", "anyOf": [{"type": "object"}], "properties": {}}, "'properties'"),
    "remote ref": ({"$ref": "https://example.com/s.json"}, "local"),
    "unknown type": ({"type": "decimal"}, "unknown type"),
    "required unknown": ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "'required'"),
    "deep": (
        {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer", "multipleOf": 2}}}},
        "#/properties/a/items",
    ),
    "in defs": ({"$ref": "#/$defs/x", "$defs": {"x": {"type": "string", "format": "uri"}}}, "format 'uri'"),
}


@pytest.mark.parametrize("schema", list(ENFORCEABLE.values()), ids=list(ENFORCEABLE))
def test_enforceable_schemas_pass(schema: dict[str, Any]) -> None:
    check_schema(schema, "response_format")
    pytest.importorskip("llama_cpp")
    # And llama-cpp-python's converter turns each into a grammar.
    assert "root ::=" in json_grammar(JsonConstraint(schema, "response_format"))._grammar


@pytest.mark.parametrize(("schema", "named"), list(UNENFORCEABLE.values()), ids=list(UNENFORCEABLE))
def test_unenforceable_schemas_are_a_400_naming_the_keyword(schema: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_schema(schema, "response_format")
    assert caught.value.param == "response_format"
    assert named in caught.value.message


def test_forced_call_schemas_are_enforceable() -> None:
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = [
        {"type": "function", "function": {"name": "weather", "parameters": parameters}},
        {"type": "function", "function": {"name": "now"}},
    ]
    plan = tool_plan({"tools": tools, "tool_choice": "required"})
    assert plan is not None
    check_schema(forced_call_schema(plan), "tool_choice")


def test_grammars_come_from_llama_cpp() -> None:
    pytest.importorskip("llama_cpp")
    grammar = json_grammar(JsonConstraint(ENFORCEABLE["nested"], "response_format"))
    assert "root ::=" in grammar._grammar
    assert "root   ::= object" in json_grammar(JsonConstraint(None, "response_format"))._grammar
    # Both pass the keyword check, but the converter has no rule for a schema with no
    # type at all and loses track of a recursive reference: a 400, not any JSON.
    untyped: dict[str, Any] = {"type": "object", "properties": {"a": {"description": "anything"}}}
    for schema in (untyped, RECURSIVE):
        check_schema(schema, "response_format")
        with pytest.raises(InvalidRequest) as caught:
            json_grammar(JsonConstraint(schema, "response_format"))
        assert caught.value.param == "response_format"
