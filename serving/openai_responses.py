"""The OpenAI Responses API, engine side: usage from a Response, and a stream of its typed events.

An HTTP engine whose deployment says ``responses: native`` serves kind
``responses``: the body is a Responses request, the answer a Response object or
its events, relayed as they come. Only what the gateway needs is read here:
usage (a Response carries it, a stream on its terminal event), the generated
text of each event (for counting when usage is missing, and for the budget's
stream meter), failures (an ``error`` event, ``response.failed``) and the end:
a Responses stream has no ``[DONE]``, it ends with ``response.completed`` or
``response.incomplete``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from serving.base import StreamChunk, Usage, make_usage
from serving.sse import UpstreamStreamError, iter_sse_batches

# A stream ends well with one of these; its response carries the usage.
TERMINAL = frozenset({"response.completed", "response.incomplete"})
FAILED = frozenset({"error", "response.failed"})
# Events whose `delta` is generated text, as counted for usage and metered against a budget.
TEXT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
    }
)


class _InputDetails(msgspec.Struct):
    cached_tokens: int = 0


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    input_tokens_details: _InputDetails | None = None

    def as_usage(self) -> Usage:
        cached = self.input_tokens_details.cached_tokens if self.input_tokens_details is not None else 0
        return make_usage(self.input_tokens, self.output_tokens, cached)


class _Error(msgspec.Struct):
    message: str = ""


class _Response(msgspec.Struct):
    usage: _Usage | None = None
    error: _Error | None = None


class _Event(msgspec.Struct):
    """Only what the gateway reads of an event; the rest is relayed untouched."""

    type: str = ""
    delta: Any = None
    response: _Response | None = None
    message: str | None = None  # of an `error` event


class _Object(msgspec.Struct):
    object: str = ""
    usage: _Usage | None = None


_response_decoder = msgspec.json.Decoder(_Object)
_event_decoder = msgspec.json.Decoder(_Event)


def response_usage(body: bytes) -> Usage | None:
    """A Response object's usage in the gateway's terms; DecodeError/ValidationError when it is not one."""
    response = _response_decoder.decode(body)
    if response.object != "response":
        raise msgspec.ValidationError("not a Response object")
    return response.usage.as_usage() if response.usage is not None else None


def peek_event(payload: bytes) -> tuple[StreamChunk, bool]:
    """One event's ``data:`` payload as a chunk, and whether it ends the stream; a failure raises."""
    try:
        event = _event_decoder.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return StreamChunk(data=payload), False  # unknown shape: relayed, counts nothing
    kind = event.type
    if kind in FAILED:
        error = event.response.error if event.response is not None else None
        raise UpstreamStreamError((error.message if error is not None else event.message) or kind)
    text = event.delta if kind in TEXT_DELTAS and isinstance(event.delta, str) else ""
    terminal = kind in TERMINAL
    usage = None
    if terminal and event.response is not None and event.response.usage is not None:
        usage = event.response.usage.as_usage()
    return StreamChunk(data=payload, usage=usage, text=text), terminal


async def response_chunks(reads: AsyncIterator[bytes]) -> AsyncIterator[StreamChunk]:
    """Each event of a Responses stream as a chunk, up to its terminal event.

    Raises ``EOFError`` when the stream stops before a terminal event (the
    upstream went away), ``UpstreamStreamError`` on a failure event.
    """
    try:
        async for batch in iter_sse_batches(reads):
            last = len(batch) - 1
            for i, payload in enumerate(batch):
                chunk, terminal = peek_event(payload)
                chunk.batch_end = terminal or i == last
                yield chunk
                if terminal:
                    return
    except EOFError:
        pass
    raise EOFError("stream ended before its terminal event")
