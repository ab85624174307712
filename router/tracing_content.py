"""Prompts and completions on a request's span, for a tenant that opted in (``trace_content``).

Shaped as the GenAI conventions' ``gen_ai.input.messages`` and
``gen_ai.output.messages`` (JSON strings of ``{role, parts}``; text parts
carry their text, tool calls their name and arguments, other parts their type
only). What is recorded is what the tenant's PII policy let leave the
building, whichever deployment served:

- the input is the body a cloud deployment gets (``ctx.cloud_body``, redacted
  or masked, when the policy changed it), never the original;
- the output is the upstream's answer before any masked value was restored,
  and nothing when a self-hosted deployment answered a body the policy had
  changed (it saw the original, and may have repeated it);
- under ``restrict`` (PII found, or the body could not be scanned) the body
  may go to self-hosted deployments only, and nothing is recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from router.tracing_genai import Attributes, upstream_kind
from serving.base import JsonObject, Kind
from serving.sse import chunk_text

if TYPE_CHECKING:
    from router.context import RequestContext

_encode = msgspec.json.encode
_decode = msgspec.json.decode
# Finish reasons as the output-messages schema spells them.
_FINISH = {"tool_calls": "tool_call", "function_call": "tool_call"}


def content_attributes(ctx: RequestContext, reply: bytes | None, finish_reasons: list[str]) -> Attributes:
    """``gen_ai.input.messages`` and ``gen_ai.output.messages`` of a finished request, as far as they may be recorded."""
    if ctx.self_hosted_only:
        return {}
    out: Attributes = {}
    changed = ctx.cloud_body is not None
    messages = input_messages(ctx.kind, ctx.cloud_body if ctx.cloud_body is not None else ctx.body)
    if messages:
        out["gen_ai.input.messages"] = _encode(messages).decode()
    served = ctx.served
    if served is None or (changed and served.config.privacy == "self_hosted"):
        return out
    if reply is not None:
        answers = output_messages(reply)
    elif ctx.generated and upstream_kind(ctx.kind, served) != "embedding":
        text = "".join(chunk_text(chunk) for chunk in ctx.generated if not chunk.usage_only)
        reason = finish_reasons[-1] if finish_reasons else ("stop" if ctx.status == 200 else "error")
        answers = [_answer([_text(text)], reason)]
    else:
        answers = []
    if answers:
        out["gen_ai.output.messages"] = _encode(answers).decode()
    return out


def input_messages(kind: Kind, body: JsonObject) -> list[JsonObject]:
    """The messages a request sends, in order (none for embeddings)."""
    if kind == "chat":
        messages = body.get("messages")
        return [_chat_message(m) for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    if kind == "completion":
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, list) else []
        return [{"role": "user", "parts": [_text(p)]} for p in prompts if isinstance(p, str)]
    if kind == "responses":
        return _responses_input(body)
    return []


def output_messages(reply: bytes) -> list[JsonObject]:
    """One message per choice of a chat or text completion, or the output of a Response."""
    try:
        body = _decode(reply)
    except msgspec.DecodeError:
        return []
    if not isinstance(body, dict):
        return []
    choices = body.get("choices")
    if isinstance(choices, list):
        return [_choice(c) for c in choices if isinstance(c, dict)]
    output = body.get("output")
    if isinstance(output, list):
        parts = [part for item in output if isinstance(item, dict) for part in _item_parts(item)]
        status = body.get("status")
        return [_answer(parts, "stop" if status == "completed" else "length" if status == "incomplete" else "error")]
    return []


def _text(content: str) -> JsonObject:
    return {"type": "text", "content": content}


def _answer(parts: list[JsonObject], finish_reason: str) -> JsonObject:
    return {"role": "assistant", "parts": parts, "finish_reason": _FINISH.get(finish_reason, finish_reason)}


def _arguments(raw: object) -> Any:
    """Tool arguments as the object they spell, or as sent when they are not JSON."""
    if isinstance(raw, str):
        try:
            return _decode(raw)
        except msgspec.DecodeError:
            return raw
    return raw


def _parts(content: object) -> list[JsonObject]:
    """A message's content: a string, or a list of typed parts (text kept; others by their type only)."""
    if isinstance(content, str):
        return [_text(content)]
    if not isinstance(content, list):
        return []
    parts: list[JsonObject] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        text = part.get("text")
        if isinstance(text, str):
            parts.append(_text(text))
        elif isinstance(part.get("type"), str):
            parts.append({"type": part["type"]})
    return parts


def _tool_calls(calls: object) -> list[JsonObject]:
    parts: list[JsonObject] = []
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts.append(
                {
                    "type": "tool_call",
                    "id": call.get("id"),
                    "name": function.get("name") or "",
                    "arguments": _arguments(function.get("arguments")),
                }
            )
    return parts


def _chat_message(message: JsonObject) -> JsonObject:
    role = message.get("role")
    if role == "tool":
        return {
            "role": "tool",
            "parts": [{"type": "tool_call_response", "id": message.get("tool_call_id"), "response": message.get("content")}],
        }
    return {"role": role, "parts": [*_parts(message.get("content")), *_tool_calls(message.get("tool_calls"))]}


def _choice(choice: JsonObject) -> JsonObject:
    message = choice.get("message")
    if isinstance(message, dict):
        parts = [*_parts(message.get("content")), *_tool_calls(message.get("tool_calls"))]
    else:
        text = choice.get("text")
        parts = [_text(text)] if isinstance(text, str) else []
    reason = choice.get("finish_reason")
    return _answer(parts, reason if isinstance(reason, str) else "stop")


def _item_parts(item: JsonObject) -> list[JsonObject]:
    """One Responses item's parts: a message's content, a function call or its output."""
    kind = item.get("type")
    if kind == "function_call":
        return [
            {"type": "tool_call", "id": item.get("call_id"), "name": item.get("name") or "", "arguments": _arguments(item.get("arguments"))}
        ]
    if kind == "function_call_output":
        return [{"type": "tool_call_response", "id": item.get("call_id"), "response": item.get("output")}]
    if kind in (None, "message"):
        return _parts(item.get("content"))
    return [{"type": kind}] if isinstance(kind, str) else []


def _responses_input(body: JsonObject) -> list[JsonObject]:
    messages: list[JsonObject] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        messages.append({"role": "system", "parts": [_text(instructions)]})
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "parts": [_text(items)]})
        return messages
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        role = "tool" if kind == "function_call_output" else item.get("role") or "assistant"
        messages.append({"role": role, "parts": _item_parts(item)})
    return messages
