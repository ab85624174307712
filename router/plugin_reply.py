"""A plugin's ``Reply`` as the client's answer: the body as a model's, rendered by the request's own surface.

A non-streamed request gets the body (through the surface's renderer, so the
Responses and Messages routes answer in their own shapes). A streamed one gets
the body turned into the chunks a model would have sent: the whole message in
one chunk, then the finish reason, the usage when the client asked for it and
the body has it, and the end of the stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from router.answers import LastChunk
from router.context import RequestContext

_DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.encode


def reply_chunks(ctx: RequestContext, body: dict[str, Any]) -> list[bytes]:
    """The chunks' JSON payloads of a chat completion or completion body."""
    chat = ctx.kind != "completion"
    envelope = {
        "id": body.get("id") or f"{'chatcmpl' if chat else 'cmpl'}-{ctx.request_id}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": body.get("created") or int(ctx.wall_started),
        "model": ctx.alias,
    }
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    finish = first.get("finish_reason") or "stop"
    payloads: list[dict[str, Any]]
    if chat:
        found = first.get("message")
        message: dict[str, Any] = found if isinstance(found, dict) else {}
        delta = {"role": "assistant", **{k: v for k, v in message.items() if k in ("content", "refusal", "tool_calls")}}
        for index, call in enumerate(delta.get("tool_calls") or []):
            if isinstance(call, dict):
                call.setdefault("index", index)
        payloads = [
            {**envelope, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
            {**envelope, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
        ]
    else:
        payloads = [
            {**envelope, "choices": [{"index": 0, "text": first.get("text") or "", "finish_reason": None}]},
            {**envelope, "choices": [{"index": 0, "text": "", "finish_reason": finish}]},
        ]
    if ctx.include_usage and isinstance(body.get("usage"), dict):
        payloads.append({**envelope, "choices": [], "usage": body["usage"]})
    return [_encode(p) for p in payloads]


def reply_body(ctx: RequestContext, body: dict[str, Any]) -> bytes:
    data = _encode({**body, "model": ctx.alias})
    return data if ctx.render is None else ctx.render.unary(ctx, data)


async def reply_stream(ctx: RequestContext, body: dict[str, Any]) -> AsyncIterator[bytes]:
    render = ctx.render
    payloads = reply_chunks(ctx, body)
    if render is None:
        yield LastChunk(b"".join([*(b"data: " + p + b"\n\n" for p in payloads), _DONE]))
        return
    yield LastChunk(b"".join([*(render.chunk(ctx, p) for p in payloads), render.end(ctx)]))
