"""A chat stream a network read at a time: OpenAIEngine.stream_batches, and serving.base.stream_batches for other engines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from core.errors import UpstreamError
from serving.base import EngineRequest, EngineSpec, StreamChunk, stream_batches
from serving.openai_http import OpenAIEngine
from tests.unit.serving.test_h1 import Server


def _event(text: str) -> bytes:
    return b'data: {"choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n' % text.encode()


USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\n\n'
ERROR = b'data: {"error":{"message":"the model fell over"}}\n\n'


def _sending(*reads: bytes) -> Server:
    """An upstream that answers each read's bytes in a write of its own, a moment apart, then closes."""

    async def answer(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        for part in reads:
            await writer.drain()
            await asyncio.sleep(0.03)  # each its own read on the other side
            writer.write(part)
        await writer.drain()
        return False

    return Server(answer)


async def _engine(url: str) -> OpenAIEngine:
    engine = OpenAIEngine(EngineSpec(name="up", provider="openai", model="m", base_url=url, api_key="sk-up"))
    await engine.start()
    return engine


def _request() -> EngineRequest:
    return EngineRequest(kind="chat", body={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, request_id="r", stream=True)


def _texts(batch: list[StreamChunk]) -> list[bytes]:
    return [chunk.data for chunk in batch]


async def test_each_read_is_one_list_whose_last_chunk_ends_the_batch() -> None:
    async with _sending(_event("a") + _event("b") + _event("c"), _event("d"), _event("e") + USAGE + b"data: [DONE]\n\n") as upstream:
        engine = await _engine(upstream.url)
        batches = [batch async for batch in engine.stream_batches(_request())]
        await engine.close()
    assert [len(batch) for batch in batches] == [3, 1, 2]
    assert [[chunk.batch_end for chunk in batch] for batch in batches] == [[False, False, True], [True], [False, True]]
    assert batches[0][1].data == _event("b")[6:-2]
    usage = batches[2][1].usage
    assert usage is not None and usage.completion_tokens == 4 and batches[2][1].usage_only
    # The chunk-at-a-time view of the same stream is the same chunks, in order.
    async with _sending(_event("a") + _event("b") + _event("c"), _event("d"), _event("e") + USAGE + b"data: [DONE]\n\n") as upstream:
        engine = await _engine(upstream.url)
        chunks = [chunk async for chunk in engine.stream(_request())]
        await engine.close()
    assert [chunk.data for chunk in chunks] == [chunk.data for batch in batches for chunk in batch]


async def test_the_chunks_before_an_error_event_in_the_same_read_come_first() -> None:
    async with _sending(_event("a"), _event("b") + _event("c") + ERROR + _event("lost")) as upstream:
        engine = await _engine(upstream.url)
        seen: list[list[bytes]] = []
        with pytest.raises(UpstreamError, match="fell over"):
            async for batch in engine.stream_batches(_request()):
                seen.append(_texts(batch))
        await engine.close()
    assert seen == [[_event("a")[6:-2]], [_event("b")[6:-2], _event("c")[6:-2]]]


async def test_a_stream_cut_before_done_is_an_upstream_error_after_what_came() -> None:
    async with _sending(_event("a") + _event("b")) as upstream:
        engine = await _engine(upstream.url)
        seen = []
        with pytest.raises(UpstreamError, match="closed the stream early"):
            async for batch in engine.stream_batches(_request()):
                seen.append(len(batch))
        await engine.close()
    assert seen == [2]


class _ChunkAtATime:
    """An engine with only ``stream``: it hands over one chunk at a time."""

    def __init__(self) -> None:
        self.closed = False

    async def stream(self, request: EngineRequest) -> AsyncIterator[StreamChunk]:
        try:
            for text in ("a", "b", "c"):
                yield StreamChunk(text.encode(), batch_end=text != "b")
        finally:
            self.closed = True


async def test_an_engine_without_lists_gets_one_chunk_per_list_and_is_closed_with_them() -> None:
    engine = _ChunkAtATime()
    batches = [batch async for batch in stream_batches(engine, _request())]  # type: ignore[arg-type]
    assert [_texts(batch) for batch in batches] == [[b"a"], [b"b"], [b"c"]]
    assert [batch[0].batch_end for batch in batches] == [True, False, True]  # where the relay writes: unchanged
    engine = _ChunkAtATime()
    lists = stream_batches(engine, _request())  # type: ignore[arg-type]
    assert _texts(await anext(lists)) == [b"a"]
    await lists.aclose()  # type: ignore[attr-defined]
    assert engine.closed  # left early: the engine's own stream is closed too
