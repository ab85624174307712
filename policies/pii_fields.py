"""Which strings of a chat request reach a model, each with its path in the body.

Everything a model reads is scanned: message content of every role (tool
results included) and text parts, message ``name``s, tool-call arguments (JSON
text: the caller decodes and scans its string leaves), and the human-readable
parts of tool definitions and of a response schema (descriptions, titles,
enum values, defaults, examples). Structural schema strings (types, property
names, formats, patterns, references) are left alone: masking them would break
the schema, and a model reads them as identifiers, not as data.

Other API surfaces (Responses, Anthropic Messages) are converted to a chat body
before the pipeline, so their instructions, system prompts and input items are
covered here too; except a Responses request whose alias has a deployment with
the Responses API, which goes through as its Responses body
(``responses_strings``): instructions, input items (message texts, function
calls' arguments and outputs, reasoning summaries, search queries and results),
function tools' prose and the ``text.format`` schema's, and a web search's
location.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Path = tuple[str | int, ...]
# (path in the body, the string, whether it is JSON text to decode and walk)
Field = tuple[Path, str, bool]

# Schema keywords whose string values are prose or data a model reads.
_PROSE_KEYS = frozenset({"description", "title", "default", "const", "examples", "enum"})
# Schema keywords holding sub-schemas: a dict of them, a list of them, or one.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SCHEMA_ONE = frozenset({"items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames"})


def chat_strings(body: dict[str, Any]) -> Iterator[Field]:
    messages = body.get("messages")
    for m, message in enumerate(messages if isinstance(messages, list) else ()):
        if isinstance(message, dict):
            yield from _message_strings(("messages", m), message)
    tools = body.get("tools")
    for t, tool in enumerate(tools if isinstance(tools, list) else ()):
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict):
            yield from _function_strings(("tools", t, "function"), function)
    functions = body.get("functions")  # the legacy form of tools
    for f, function in enumerate(functions if isinstance(functions, list) else ()):
        if isinstance(function, dict):
            yield from _function_strings(("functions", f), function)
    response_format = body.get("response_format")
    spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
    if isinstance(spec, dict):
        if isinstance(spec.get("description"), str):
            yield ("response_format", "json_schema", "description"), spec["description"], False
        yield from schema_strings(("response_format", "json_schema", "schema"), spec.get("schema"))


def _message_strings(at: Path, message: dict[str, Any]) -> Iterator[Field]:
    content = message.get("content")
    if isinstance(content, str):
        yield (*at, "content"), content, False
    elif isinstance(content, list):
        for p, part in enumerate(content):
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield (*at, "content", p, "text"), part["text"], False
    if isinstance(message.get("name"), str):
        yield (*at, "name"), message["name"], False
    calls = message.get("tool_calls")
    for c, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            yield (*at, "tool_calls", c, "function", "arguments"), function["arguments"], True
    function = message.get("function_call")
    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
        yield (*at, "function_call", "arguments"), function["arguments"], True


def _function_strings(at: Path, function: dict[str, Any]) -> Iterator[Field]:
    if isinstance(function.get("description"), str):
        yield (*at, "description"), function["description"], False
    yield from schema_strings((*at, "parameters"), function.get("parameters"))


def schema_strings(at: Path, schema: Any) -> Iterator[Field]:
    """The prose and data strings of a JSON schema, recursively; never its structure."""
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        if key in _PROSE_KEYS:
            yield from _leaves((*at, key), value)
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                yield from schema_strings((*at, key, name), sub)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                yield from schema_strings((*at, key, i), sub)
        elif key in _SCHEMA_ONE:
            if isinstance(value, list):  # draft-04 tuple form of items
                for i, sub in enumerate(value):
                    yield from schema_strings((*at, key, i), sub)
            else:
                yield from schema_strings((*at, key), value)


def _leaves(at: Path, value: Any) -> Iterator[Field]:
    if isinstance(value, str):
        yield at, value, False
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves((*at, i), item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves((*at, key), item)


# --- the Responses API's body ------------------------------------------------------------


def responses_strings(body: dict[str, Any]) -> Iterator[Field]:
    if isinstance(body.get("instructions"), str):
        yield ("instructions",), body["instructions"], False
    items = body.get("input")
    if isinstance(items, str):
        yield ("input",), items, False
    for i, item in enumerate(items if isinstance(items, list) else ()):
        if isinstance(item, dict):
            yield from _item_strings(("input", i), item)
    tools = body.get("tools")
    for t, tool in enumerate(tools if isinstance(tools, list) else ()):
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "function":
            yield from _function_strings(("tools", t), tool)
        location = tool.get("user_location")
        if isinstance(location, dict):
            for key in ("city", "region"):
                if isinstance(location.get(key), str):
                    yield ("tools", t, "user_location", key), location[key], False
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        if isinstance(fmt.get("description"), str):
            yield ("text", "format", "description"), fmt["description"], False
        yield from schema_strings(("text", "format", "schema"), fmt.get("schema"))


def _item_strings(at: Path, item: dict[str, Any]) -> Iterator[Field]:
    kind = item.get("type", "message")
    if kind == "message":
        yield from _parts_strings((*at, "content"), item.get("content"))
    elif kind == "function_call" and isinstance(item.get("arguments"), str):
        yield (*at, "arguments"), item["arguments"], True
    elif kind == "function_call_output":
        yield from _parts_strings((*at, "output"), item.get("output"))
    elif kind == "reasoning":
        yield from _parts_strings((*at, "summary"), item.get("summary"))
        yield from _parts_strings((*at, "content"), item.get("content"))
    elif kind == "web_search_call":
        action = item.get("action")
        if isinstance(action, dict) and isinstance(action.get("query"), str):
            yield (*at, "action", "query"), action["query"], False
    elif kind == "file_search_call":
        queries = item.get("queries")
        for q, query in enumerate(queries if isinstance(queries, list) else ()):
            if isinstance(query, str):
                yield (*at, "queries", q), query, False
        yield from _parts_strings((*at, "results"), item.get("results"))


def _parts_strings(at: Path, content: Any) -> Iterator[Field]:
    """A string, or the ``text`` (and ``refusal``) of each part of a list."""
    if isinstance(content, str):
        yield at, content, False
        return
    for p, part in enumerate(content if isinstance(content, list) else ()):
        for key in ("text", "refusal") if isinstance(part, dict) else ():
            if isinstance(part.get(key), str):
                yield (*at, p, key), part[key], False
