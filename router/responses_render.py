"""Chat completion --> a Response object, as the openai SDK parses it (``openai.types.responses.Response``).

``ResponsesRenderer`` is the surface's ``router.render.Renderer``: ``unary``
here, the stream's events in ``router.responses_stream``. Either way the
finished Response object is left in ``final`` for the route to store.
"""

from __future__ import annotations

from typing import Any

import msgspec

from core.errors import GatewayError
from router.chat_read import ChatUsage, Choice, Function, Message, decode_completion
from serving.base import Usage

JsonObject = dict[str, Any]


# --- Response pieces ------------------------------------------------------------------


def output_text(text: str) -> JsonObject:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def refusal(text: str) -> JsonObject:
    return {"type": "refusal", "refusal": text}


def message_item(item_id: str, parts: list[JsonObject], status: str) -> JsonObject:
    return {"type": "message", "id": item_id, "role": "assistant", "status": status, "content": parts}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> JsonObject:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments, "status": status}


def usage_object(usage: ChatUsage | Usage | None) -> JsonObject | None:
    """OpenAI chat usage --> Responses usage; None when the upstream reported none."""
    if usage is None:
        return None
    cached = reasoning = 0
    if isinstance(usage, ChatUsage):
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details is not None else 0
        reasoning = usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details is not None else 0
    else:
        cached = usage.cached_tokens
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
    }


# Chat's finish reasons that leave a response incomplete, and why in Responses' words.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def failure(exc: GatewayError) -> JsonObject:
    # A Response's error codes are a closed set: a rate limit, or the server's fault.
    return {"code": "rate_limit_exceeded" if exc.status == 429 else "server_error", "message": exc.message}


class ResponseHead:
    """What every Response object of one request repeats: id, time, model and the request's settings."""

    def __init__(self, response_id: str, created_at: int, model: str, echo: JsonObject) -> None:
        self.response_id = response_id
        self.created_at = created_at
        self.model = model
        self.echo = echo

    def response(
        self,
        status: str,
        output: list[JsonObject],
        usage: JsonObject | None = None,
        *,
        finish: str | None = None,
        error: JsonObject | None = None,
    ) -> JsonObject:
        reason = INCOMPLETE.get(finish or "")
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": "incomplete" if status == "completed" and reason is not None else status,
            "error": error,
            "incomplete_details": {"reason": reason} if reason is not None and status == "completed" else None,
            "model": self.model,
            "output": output,
            "usage": usage,
            **self.echo,
        }


def unary_response(head: ResponseHead, body: bytes, measured: Usage | None) -> JsonObject:
    """The whole Response for a non-streamed chat completion; ``measured`` stands in for usage the body lacks."""
    completion = decode_completion(body)
    choice = completion.choices[0] if completion.choices else Choice()
    message = choice.message or Message()
    status = "incomplete" if choice.finish_reason in INCOMPLETE else "completed"
    rid = head.response_id.removeprefix("resp_")
    output: list[JsonObject] = []
    parts = ([output_text(message.content)] if message.content else []) + ([refusal(message.refusal)] if message.refusal else [])
    if parts:
        output.append(message_item(f"msg_{rid}", parts, status))
    for n, call in enumerate(message.tool_calls or ()):
        function = call.function or Function()
        call_id = call.id or f"call_{rid}_{n}"
        output.append(call_item(f"fc_{rid}_{n}", call_id, function.name or "", function.arguments or "", "completed"))
    usage = usage_object(completion.usage if completion.usage is not None else measured)
    return head.response("completed", output, usage, finish=choice.finish_reason)


class EventWriter:
    """Typed Responses events: numbered in order, framed ``event: TYPE`` / ``data: JSON``, held until flushed."""

    def __init__(self) -> None:
        self._seq = 0
        self._events: list[bytes] = []

    def _emit(self, kind: str, **fields: Any) -> None:
        payload = msgspec.json.encode({"type": kind, "sequence_number": self._seq, **fields})
        self._seq += 1
        self._events.append(b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n")

    def _flush(self) -> bytes:
        out = b"".join(self._events)
        self._events.clear()
        return out
