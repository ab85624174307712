from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from serving.sse import UpstreamStreamError, iter_sse_data, peek_chunk


async def _lines(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def _collect(*items: bytes) -> list[bytes]:
    return [d async for d in iter_sse_data(_lines(*items))]


async def test_events_until_done() -> None:
    got = await _collect(b"data: {\"a\":1}\n", b"\n", b": keep-alive\n", b"\n", b"data:{\"b\":2}\r\n", b"\r\n", b"data: [DONE]\n", b"\n")
    assert got == [b'{"a":1}', b'{"b":2}']


async def test_multiline_data_is_joined() -> None:
    assert await _collect(b"data: {\"a\":\n", b"data: 1}\n", b"\n", b"data: [DONE]\n\n") == [b'{"a":\n1}']


async def test_end_without_done_is_an_error() -> None:
    with pytest.raises(EOFError):
        await _collect(b"data: {\"a\":1}\n", b"\n")


def test_peek_content_usage_and_finish() -> None:
    chunk = peek_chunk(b'{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}')
    assert (chunk.text, chunk.finish_reason, chunk.usage_only) == ("Hi", "stop", False)
    usage = peek_chunk(b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}')
    assert usage.usage_only and usage.usage is not None and usage.usage.total_tokens == 7
    text = peek_chunk(b'{"choices":[{"index":0,"text":"abc","finish_reason":null}]}')
    assert text.text == "abc"


def test_peek_error_event_raises() -> None:
    with pytest.raises(UpstreamStreamError, match="boom"):
        peek_chunk(b'{"error":{"message":"boom","type":"server_error"}}')


def test_unknown_shape_is_relayed() -> None:
    chunk = peek_chunk(b'{"choices":"weird"}')
    assert chunk.data == b'{"choices":"weird"}' and chunk.usage is None
