from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from serving.sse import UpstreamStreamError, chunk_text, iter_sse_data, peek_chunk


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
