"""The texts guardrails read: a request's (``pii_fields``' walk, each string labelled) and a response's.

``request_texts`` labels each string the PII walk finds with what it is (a
prompt, a tool result, retrieved content, a tool call's arguments, a
definition's prose) and adds the tools a request offers or chooses
(``tool_name``): chat ``tools[].function.name`` (or a custom tool's name),
legacy ``functions[].name``, ``tool_choice``/``function_call`` naming one; a
Responses body's ``tools[].name`` (a built-in tool by its ``type``) and its
``tool_choice``. ``output_texts`` reads a chat completion, a completion or a
Responses body; ``chunk_deltas`` a streamed chunk or Responses stream event.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from policies.guardrails_types import Source, Text
from policies.pii_fields import Path, chat_strings, responses_strings

Kind = Literal["chat", "completion", "embedding", "responses"]
# (stream key, text): the key tells one stream of text from another within a response.
Delta = tuple[tuple[int | str, ...], str]


def request_texts(kind: Kind, body: dict[str, Any]) -> list[Text]:
    if kind == "chat":
        return [*_chat(body), *chat_tool_names(body)]
    if kind == "responses":
        return [*_responses(body), *responses_tool_names(body)]
    key = "prompt" if kind == "completion" else "input"
    sent = body.get(key)
    if isinstance(sent, str):
        return [Text((key,), sent, "prompt")]
    items = sent if isinstance(sent, list) else ()
    return [Text((key, i), v, "prompt") for i, v in enumerate(items) if isinstance(v, str)]


def _chat(body: dict[str, Any]) -> Iterator[Text]:
    messages = body.get("messages")
    for path, value, is_json in chat_strings(body):
        if path[0] != "messages" or not isinstance(messages, list):
            yield Text(path, value, "definition")
            continue
        message = messages[int(path[1])]
        name = message.get("name") if isinstance(message.get("name"), str) else None
        if is_json:
            source: Source = "tool_call"
        elif message.get("role") in ("tool", "function"):
            source = "tool_result"
        else:
            source = "prompt"
        yield Text(path, value, source, name)


_RESPONSES_ITEM_SOURCES: dict[str, Source] = {
    "function_call": "tool_call",
    "function_call_output": "tool_result",
    "custom_tool_call_output": "tool_result",
}


def _responses(body: dict[str, Any]) -> Iterator[Text]:
    items = body.get("input")
    for path, value, _ in responses_strings(body):
        if path[0] in ("tools", "text"):
            yield Text(path, value, "definition")
        elif path[0] == "input" and len(path) > 2 and isinstance(items, list):
            kind = items[int(path[1])].get("type", "message")
            if kind == "file_search_call" and path[2] == "results":
                yield Text(path, value, "retrieved")
            else:
                yield Text(path, value, _RESPONSES_ITEM_SOURCES.get(kind, "prompt"))
        else:
            yield Text(path, value, "prompt")


def chat_tool_names(body: dict[str, Any]) -> Iterator[Text]:
    tools = body.get("tools")
    for t, tool in enumerate(tools if isinstance(tools, list) else ()):
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type", "function")
        spec = tool.get(kind) if isinstance(kind, str) else None
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            yield Text(("tools", t, str(kind), "name"), spec["name"], "tool_name")
        elif isinstance(kind, str):
            yield Text(("tools", t, "type"), kind, "tool_name")
    functions = body.get("functions")
    for f, function in enumerate(functions if isinstance(functions, list) else ()):
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            yield Text(("functions", f, "name"), function["name"], "tool_name")
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        named = choice.get(choice.get("type", "function")) if isinstance(choice.get("type", "function"), str) else None
        if isinstance(named, dict) and isinstance(named.get("name"), str):
            yield Text(("tool_choice", str(choice.get("type", "function")), "name"), named["name"], "tool_name")
    legacy = body.get("function_call")
    if isinstance(legacy, dict) and isinstance(legacy.get("name"), str):
        yield Text(("function_call", "name"), legacy["name"], "tool_name")


def responses_tool_names(body: dict[str, Any]) -> Iterator[Text]:
    tools = body.get("tools")
    for t, tool in enumerate(tools if isinstance(tools, list) else ()):
        if not isinstance(tool, dict):
            continue
        if isinstance(tool.get("name"), str):
            yield Text(("tools", t, "name"), tool["name"], "tool_name")
        elif isinstance(tool.get("type"), str):
            yield Text(("tools", t, "type"), tool["type"], "tool_name")
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        if isinstance(choice.get("name"), str):
            yield Text(("tool_choice", "name"), choice["name"], "tool_name")
        elif choice.get("type") not in (None, "function", "allowed_tools") and isinstance(choice.get("type"), str):
            yield Text(("tool_choice", "type"), choice["type"], "tool_name")


# --- responses ---------------------------------------------------------------------------


def output_texts(body: dict[str, Any]) -> list[Text]:
    """A chat completion's, a completion's or a Responses body's answer texts."""
    found: list[Text] = []
    choices = body.get("choices")
    for c, choice in enumerate(choices if isinstance(choices, list) else ()):
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            found.append(Text(("choices", c, "text"), choice["text"], "output"))
        message = choice.get("message")
        if isinstance(message, dict):
            found.extend(Text(("choices", c, "message", *p), v, "output") for p, v in _message_outputs(message))
    output = body.get("output")
    for i, item in enumerate(output if isinstance(output, list) else ()):
        if isinstance(item, dict):
            found.extend(Text(("output", i, *p), v, "output") for p, v in _item_outputs(item))
    return found


def _message_outputs(message: dict[str, Any]) -> Iterator[tuple[Path, str]]:
    content = message.get("content")
    if isinstance(content, str):
        yield ("content",), content
    for p, part in enumerate(content if isinstance(content, list) else ()):
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            yield ("content", p, "text"), part["text"]
    calls = message.get("tool_calls")
    for c, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            yield ("tool_calls", c, "function", "arguments"), function["arguments"]
    legacy = message.get("function_call")
    if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
        yield ("function_call", "arguments"), legacy["arguments"]


def _item_outputs(item: dict[str, Any]) -> Iterator[tuple[Path, str]]:
    if isinstance(item.get("arguments"), str):
        yield ("arguments",), item["arguments"]
    content = item.get("content")
    for p, part in enumerate(content if isinstance(content, list) else ()):
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            yield ("content", p, "text"), part["text"]


def chunk_deltas(chunk: Any) -> Iterator[Delta]:
    """The new text of one streamed chunk (chat or completion) or Responses stream event, by stream."""
    if not isinstance(chunk, dict):
        return
    choices = chunk.get("choices")
    for position, choice in enumerate(choices if isinstance(choices, list) else ()):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", position)
        index = index if isinstance(index, int) else position
        if isinstance(choice.get("text"), str):
            yield (index, "text"), choice["text"]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            yield from _delta_texts(index, delta)
    event = chunk.get("type")
    if isinstance(event, str) and event.endswith(".delta") and isinstance(chunk.get("delta"), str):
        output, part = chunk.get("output_index", 0), chunk.get("content_index", 0)
        yield ("response", output if isinstance(output, int) else 0, part if isinstance(part, int) else 0), chunk["delta"]


def _delta_texts(index: int, delta: dict[str, Any]) -> Iterator[Delta]:
    if isinstance(delta.get("content"), str):
        yield (index, "content"), delta["content"]
    calls = delta.get("tool_calls")
    for position, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            tool = call.get("index", position)
            yield (index, "tool", tool if isinstance(tool, int) else position), function["arguments"]
    legacy = delta.get("function_call")
    if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
        yield (index, "function"), legacy["arguments"]
