"""Which strings of a chat body are scanned for PII, and which schema strings are left alone."""

from __future__ import annotations

from policies.pii_fields import chat_strings, schema_strings


def test_message_fields_names_and_tool_arguments() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "hi", "name": "jane"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "result"}]},
        ]
    }
    assert list(chat_strings(body)) == [
        (("messages", 0, "content"), "hi", False),
        (("messages", 0, "name"), "jane", False),
        (("messages", 1, "tool_calls", 0, "function", "arguments"), "{}", True),
        (("messages", 2, "content", 0, "text"), "result", False),
    ]


def test_tool_definitions_yield_prose_never_structure() -> None:
    schema = {
        "type": "object",
        "title": "Query",
        "required": ["email"],
        "properties": {
            "email": {"type": "string", "format": "email", "description": "d1", "examples": ["e1"]},
            "kind": {"anyOf": [{"const": "c1"}, {"enum": ["v1", 2]}]},
            "tags": {"type": "array", "items": {"type": "string", "pattern": "^a", "default": "x1"}},
        },
        "$defs": {"Ref": {"description": "d2"}},
    }
    body = {"messages": [], "tools": [{"type": "function", "function": {"name": "lookup", "description": "fd", "parameters": schema}}]}
    found = {path: text for path, text, _ in chat_strings(body)}
    at = ("tools", 0, "function")
    assert found == {
        (*at, "description"): "fd",
        (*at, "parameters", "title"): "Query",
        (*at, "parameters", "properties", "email", "description"): "d1",
        (*at, "parameters", "properties", "email", "examples", 0): "e1",
        (*at, "parameters", "properties", "kind", "anyOf", 0, "const"): "c1",
        (*at, "parameters", "properties", "kind", "anyOf", 1, "enum", 0): "v1",
        (*at, "parameters", "properties", "tags", "items", "default"): "x1",
        (*at, "parameters", "$defs", "Ref", "description"): "d2",
    }


def test_legacy_functions_and_response_schema() -> None:
    body = {
        "messages": [],
        "functions": [{"name": "f", "description": "legacy"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "description": "rd", "schema": {"description": "sd"}}},
    }
    assert sorted(text for _, text, _ in chat_strings(body)) == ["legacy", "rd", "sd"]


def test_malformed_shapes_are_skipped_not_raised() -> None:
    body = {"messages": ["x", {"content": 3}], "tools": ["y", {"function": "z"}], "response_format": "text"}
    assert list(chat_strings(body)) == []
    assert list(schema_strings((), ["not", "a", "schema"])) == []
