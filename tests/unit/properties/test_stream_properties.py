"""The SSE relay's readers and the Anthropic translators on arbitrary input.

The relay must hand on exactly the events an upstream sent however the bytes
were split into network reads, never undercount text for metering, and turn
anything malformed into a gateway error (never an exception the pipeline
does not expect).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.errors import GatewayError
from serving.anthropic_stream import StreamTranslator
from serving.anthropic_translate import to_anthropic_request, to_openai_response
from serving.base import StreamChunk
from serving.sse import (
    UpstreamStreamError,
    chunk_text,
    iter_sse_batches,
    peek_chunk,
    text_bytes_bound,
)
from tests.unit.properties.strategies import encode, json_objects, json_values

# Payloads are single-line (as JSON encoders write them) and never "[DONE]".
payloads = st.builds(encode, json_objects) | st.binary(max_size=60).filter(
    lambda b: b"\n" not in b and b"\r" not in b and b.strip() != b"[DONE]"
)


async def _reads(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in sorted(set(cuts)):
        if start < cut < len(data):
            yield data[start:cut]
            start = cut
    yield data[start:]


async def _collect(data: bytes, cuts: list[int]) -> tuple[list[bytes], bool]:
    out: list[bytes] = []
    try:
        async for batch in iter_sse_batches(_reads(data, cuts)):
            out.extend(batch)
    except EOFError:
        return out, False
    return out, True


@settings(max_examples=120, deadline=None)
@given(st.lists(payloads, max_size=8), st.lists(st.integers(0, 2000), max_size=12), st.booleans(), st.booleans())
def test_events_survive_any_split_into_reads(events: list[bytes], cuts: list[int], crlf: bool, done: bool) -> None:
    sep = b"\r\n" if crlf else b"\n"
    stream = b"".join(b"data: " + e + sep + sep for e in events) + (b"data: [DONE]" + sep + sep if done else b"")
    got, finished = asyncio.run(_collect(stream, cuts))
    assert got == events
    assert finished == done


_text = st.text(max_size=30)
_chunk = st.fixed_dictionaries(
    {
        "choices": st.lists(
            st.fixed_dictionaries({"delta": st.fixed_dictionaries({"content": _text}), "index": st.integers(0, 3)})
            | st.fixed_dictionaries({"text": _text}),
            max_size=3,
        )
    },
    optional={"id": _text, "usage": st.none()},
)


@settings(max_examples=120, deadline=None)
@given(_chunk)
def test_the_metering_bound_never_undercounts_text(chunk: dict[str, Any]) -> None:
    data = encode(chunk)
    peeked = peek_chunk(data)
    bound = text_bytes_bound(StreamChunk(data=data, text=None))
    text = chunk_text(peeked)
    assert bound >= len(text.encode("utf-8"))
    expected = "".join(c.get("text") or c.get("delta", {}).get("content") or "" for c in chunk["choices"])
    assert text == expected


@settings(max_examples=120, deadline=None)
@given(st.binary(max_size=200) | st.builds(encode, json_values))
def test_peeking_any_payload_gives_a_chunk_or_an_upstream_error(data: bytes) -> None:
    try:
        chunk = peek_chunk(data)
        chunk_text(chunk)
    except UpstreamStreamError:
        pass


@settings(max_examples=120, deadline=None)
@given(
    json_objects
    | st.fixed_dictionaries(
        {"model": st.just("m"), "messages": json_values},
        optional={
            "tools": json_values,
            "tool_choice": json_values,
            "max_tokens": json_values,
            "stop": json_values,
            "temperature": json_values,
        },
    )
)
def test_openai_to_anthropic_raises_only_gateway_errors(body: dict[str, Any]) -> None:
    try:
        out = to_anthropic_request(body, default_max_tokens=16)
    except GatewayError as exc:
        assert 400 <= exc.status < 500
    else:
        encode(out)


_event_type = st.sampled_from(
    ["message_start", "content_block_start", "content_block_delta", "message_delta", "message_stop", "ping", "error", "content_block_stop"]
)
anthropic_events = st.fixed_dictionaries(
    {"type": _event_type},
    optional={
        "index": json_values,
        "message": json_values,
        "content_block": json_values,
        "delta": json_values,
        "usage": json_values,
        "error": json_values,
    },
)


@settings(max_examples=120, deadline=None)
@given(st.lists(anthropic_events | json_objects, max_size=10))
# Inputs that crashed the translator before it mapped malformed events to upstream errors:
@example([{"type": "error", "error": []}])
@example([{"type": "error", "error": None, "message": 0}, {"type": "content_block_delta", "delta": []}])
@example([{"type": "message_start", "message": []}])
@example([{"type": "content_block_start", "content_block": {"type": "tool_use"}, "index": []}])
def test_anthropic_stream_events_translate_or_fail_as_upstream_errors(events: list[dict[str, Any]]) -> None:
    translator = StreamTranslator(created=0)
    try:
        for event in events:
            for chunk in translator.feed(event):
                assert isinstance(chunk.data, bytes)
    except GatewayError as exc:
        assert exc.retryable or exc.status >= 500


@settings(max_examples=120, deadline=None)
@given(
    json_objects
    | st.fixed_dictionaries(
        {"content": json_values}, optional={"usage": json_values, "stop_reason": json_values, "id": json_values, "model": json_values}
    )
)
@example({"content": True})
@example({"content": [None]})
@example({"content": [{"type": "text"}]})
@example({"content": [], "usage": {"input_tokens": "many"}})
def test_anthropic_messages_translate_or_fail_as_upstream_errors(message: dict[str, Any]) -> None:
    try:
        body, usage = to_openai_response(message, created=0)
    except GatewayError as exc:
        assert exc.status >= 500
    else:
        encode(body)
        assert usage.total_tokens >= 0
