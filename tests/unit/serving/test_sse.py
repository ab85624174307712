from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from serving.base import StreamChunk
from serving.sse import (
    UpstreamStreamError,
    chunk_text,
    iter_sse_data,
    peek_chunk,
    text_bytes_bound,
)


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
    chunk = peek_chunk(b'{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}],"usage":null}')
    # Content chunks are not decoded on the hot path; their text is read when asked for.
    assert chunk.text is None and chunk.usage is None
    assert chunk_text(chunk) == "Hi" and chunk.finish_reason == "stop" and not chunk.usage_only
    usage = peek_chunk(b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}')
    assert usage.usage_only and usage.usage is not None and usage.usage.total_tokens == 7
    text = peek_chunk(b'{"choices":[{"index":0,"text":"abc","finish_reason":null}]}')
    assert chunk_text(text) == "abc"
    quoted = peek_chunk(b'{"choices":[{"index":0,"delta":{"content":"say \\"usage\\":{ x"}}]}')
    assert quoted.text is None and chunk_text(quoted) == 'say "usage":{ x'


def test_peek_error_event_raises() -> None:
    with pytest.raises(UpstreamStreamError, match="boom"):
        peek_chunk(b'{"error":{"message":"boom","type":"server_error"}}')


def test_unknown_shape_is_relayed() -> None:
    chunk = peek_chunk(b'{"choices":"weird"}')
    assert chunk.data == b'{"choices":"weird"}' and chunk.usage is None


async def test_events_split_anywhere_across_reads() -> None:
    stream = b'data: {"a":1}\n\nevent: x\ndata: {"b":\ndata: 2}\n\n: ping\n\ndata: {"c":3}\r\n\r\ndata: [DONE]\n\n'
    expected = [b'{"a":1}', b'{"b":\n2}', b'{"c":3}']
    for cut in range(1, len(stream)):
        assert await _collect(stream[:cut], stream[cut:]) == expected, cut
    assert await _collect(*[stream[i : i + 1] for i in range(len(stream))]) == expected


async def test_last_event_without_trailing_blank_line() -> None:
    assert await _collect(b'data: {"a":1}\n\ndata: [DONE]') == [b'{"a":1}']
    with pytest.raises(EOFError):
        await _collect(b'data: {"a":1}\n\ndata: {"b":2}')


async def test_events_of_one_read_come_as_one_batch() -> None:
    from serving.sse import iter_sse_batches

    reads = [b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: {"c"', b':3}\n\n', b"data: [DONE]\n\n"]

    async def gen():
        for r in reads:
            yield r

    assert [b async for b in iter_sse_batches(gen())] == [[b'{"a":1}', b'{"b":2}'], [b'{"c":3}']]


@pytest.mark.parametrize(
    "event",
    [
        {"choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "héllo wörld ✓ 😀"}}]},
        {"choices": [{"index": 0, "delta": {"content": 'quotes " and \\ and \n newlines'}}]},
        {"choices": [{"index": 0, "delta": {"content": "a"}}, {"index": 1, "delta": {"content": "bcd"}}]},
        {"choices": [{"index": 0, "text": "completion text"}]},
        {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}},
        {"id": "x", "choices": [{"index": 0, "delta": {"content": "text"}, "logprobs": {"text": "zz"}}]},
    ],
)
@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_text_bytes_bound_never_undercounts(event: dict[str, object], ensure_ascii: bool) -> None:
    data = json.dumps(event, ensure_ascii=ensure_ascii).encode()
    text = chunk_text(StreamChunk(data=data, text=None))
    bound = text_bytes_bound(StreamChunk(data=data, text=None))
    assert len(text.encode()) <= bound <= len(data)
    compact = json.dumps(event, ensure_ascii=ensure_ascii, separators=(",", ":")).encode()
    assert len(text.encode()) <= text_bytes_bound(StreamChunk(data=compact, text=None))


def test_text_bytes_bound_is_tight_for_a_typical_chunk() -> None:
    data = (
        b'{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1700000000,"model":"m",'
        b'"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}'
    )
    assert text_bytes_bound(StreamChunk(data=data, text=None)) == len(data) - data.index(b'"content"') < 50
    # No text member at all: nothing to count.
    assert text_bytes_bound(StreamChunk(data=b'{"choices":[{"delta":{"role":"assistant"}}]}', text=None)) == 0
    # A key spelled with an escape is still bounded (by the whole event).
    escaped = b'{"choices":[{"delta":{"\\u0063ontent":"Hello"}}]}'
    assert chunk_text(StreamChunk(data=escaped, text=None)) == "Hello"
    assert text_bytes_bound(StreamChunk(data=escaped, text=None)) == len(escaped)
    # Decoded text is used as is.
    assert text_bytes_bound(StreamChunk(data=b"{}", text="é")) == 2

