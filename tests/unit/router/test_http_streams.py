"""router.http_protocol and router.answers: a stream's head, chunks and end written straight to the cycle, in as
few writes as the stream allows; a client that leaves a stream."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.fakes.http_cycle import DEFAULT_HEADERS, SSE_HEADERS, new_cycle, serving, start_message


async def test_a_stream_written_directly_is_the_same_bytes_as_sent_by_messages() -> None:
    for keep_alive in (True, False):
        sent, by_send = new_cycle(keep_alive=keep_alive, default_headers=DEFAULT_HEADERS)
        await sent.send(start_message(200, list(SSE_HEADERS)))
        for body, more in ((b"data: 1\n\n", True), (b"", True), (b"data: [DONE]\n\n", True), (b"", False)):
            await sent.send({"type": "http.response.body", "body": body, "more_body": more})
        done: list[int] = []
        direct, by_write = new_cycle(keep_alive=keep_alive, default_headers=DEFAULT_HEADERS, on_response=lambda: done.append(1))
        assert direct.start_chunks(200, list(SSE_HEADERS))
        assert direct.write_chunk(b"data: 1\n\n") and direct.write_chunk(b"") and direct.write_chunk(b"data: [DONE]\n\n")
        assert done == [] and direct.end_chunks() and done == [1]
        # send writes an empty chunk as an empty write, which sends nothing
        assert by_write.writes == [w for w in by_send.writes if w] and by_write.closed is (not keep_alive)
        assert direct.response_complete and not direct.write_chunk(b"x") and not direct.end_chunks()


async def test_a_stream_leaves_to_send_what_send_must_do() -> None:
    cycle, transport = new_cycle()
    assert not cycle.start_chunks(200, [(b"content-length", b"3")])  # a length: not a stream to frame here
    assert not cycle.start_chunks(204, [])
    assert not cycle.write_chunk(b"x") and transport.writes == []  # nothing started
    assert cycle.start_chunks(200, list(SSE_HEADERS))
    cycle.flow.write_paused = True
    assert not cycle.write_chunk(b"x") and not cycle.end_chunks()
    cycle.flow.write_paused = False
    cycle.disconnected = True
    assert not cycle.write_chunk(b"x") and len(transport.writes) == 1


async def test_a_stream_answer_writes_its_chunks_directly_and_by_messages_when_writes_pause() -> None:
    from router.answers import StreamAnswer

    cycle, transport = new_cycle()
    disconnect = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def chunks() -> Any:
        yield b"data: 1\n\n"
        cycle.flow.write_paused = True  # the client is slow: the next chunk goes through send, which waits for the drain
        asyncio.get_running_loop().call_later(0.05, cycle.flow.resume_writing)
        yield b"data: 2\n\n"
        yield b"data: 3\n\n"

    await StreamAnswer(chunks(), list(SSE_HEADERS))({"type": "http"}, receive, cycle.send)  # type: ignore[arg-type]
    assert transport.writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n")  # the head with the first
    assert transport.writes[1:] == [b"9\r\ndata: 2\n\n\r\n", b"9\r\ndata: 3\n\n\r\n", b"0\r\n\r\n"]
    assert cycle.response_complete


async def test_a_streams_last_chunk_goes_out_in_one_write_with_its_end() -> None:
    from router.answers import LastChunk, StreamAnswer

    direct, by_write = new_cycle(default_headers=DEFAULT_HEADERS)
    assert direct.start_chunks(200, list(SSE_HEADERS)) and direct.end_chunks(b"data: [DONE]\n\n")
    apart, by_two = new_cycle(default_headers=DEFAULT_HEADERS)
    assert apart.start_chunks(200, list(SSE_HEADERS)) and apart.write_chunk(b"data: [DONE]\n\n") and apart.end_chunks()
    assert by_write.writes == [by_two.writes[0], b"".join(by_two.writes[1:])]  # the same bytes, one write fewer

    done: list[int] = []
    cycle, transport = new_cycle(on_response=lambda: done.append(1))
    after_last: list[str] = []

    async def chunks() -> Any:
        try:
            yield b"data: 1\n\n"
            yield LastChunk(b"data: [DONE]\n\n")
        finally:
            after_last.append("closed")  # the relay's own end (settlement, the upstream closed) still runs

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    await StreamAnswer(chunks(), list(SSE_HEADERS))({"type": "http"}, receive, cycle.send)  # type: ignore[arg-type]
    assert transport.writes[0].endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n")
    assert transport.writes[1:] == [b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"]
    assert after_last == ["closed"] and done == [1] and cycle.response_complete

    # Writes paused when the last chunk comes: it goes through send, which waits for the drain, and so does the end.
    paused, slow = new_cycle()

    async def pausing() -> Any:
        yield b"data: 1\n\n"
        paused.flow.write_paused = True
        asyncio.get_running_loop().call_later(0.05, paused.flow.resume_writing)
        yield LastChunk(b"data: [DONE]\n\n")

    await StreamAnswer(pausing(), list(SSE_HEADERS))({"type": "http"}, receive, paused.send)  # type: ignore[arg-type]
    assert slow.writes[1:] == [b"e\r\ndata: [DONE]\n\n\r\n", b"0\r\n\r\n"]
    assert paused.response_complete


async def test_a_held_head_goes_out_with_the_first_chunk_or_alone_at_the_loops_next_round() -> None:
    loop = asyncio.get_running_loop()
    apart, by_two = new_cycle(default_headers=DEFAULT_HEADERS)
    assert apart.start_chunks(200, list(SSE_HEADERS)) and apart.write_chunk(b"data: 1\n\n") and apart.end_chunks(b"data: [DONE]\n\n")

    held, by_held = new_cycle(default_headers=DEFAULT_HEADERS)
    assert held.start_chunks(200, list(SSE_HEADERS), loop) and by_held.writes == []
    assert held.write_chunk(b"") and by_held.writes == []  # an empty chunk carries nothing, the head neither
    assert held.write_chunk(b"data: 1\n\n") and held.end_chunks(b"data: [DONE]\n\n")
    assert by_held.writes == [by_two.writes[0] + by_two.writes[1], by_two.writes[2]]  # the same bytes, one write fewer
    await asyncio.sleep(0)
    assert len(by_held.writes) == 2  # the loop's round found nothing left to write

    ended, by_end = new_cycle(default_headers=DEFAULT_HEADERS)
    assert ended.start_chunks(200, list(SSE_HEADERS), loop) and ended.end_chunks(b"data: [DONE]\n\n")
    assert by_end.writes == [by_two.writes[0] + by_two.writes[2]] and ended.response_complete

    waiting, by_wait = new_cycle(default_headers=DEFAULT_HEADERS)
    assert waiting.start_chunks(200, list(SSE_HEADERS), loop)
    await asyncio.sleep(0)  # no chunk in this round: the status goes out on its own
    assert by_wait.writes == [by_two.writes[0]]
    assert waiting.write_chunk(b"data: 1\n\n") and by_wait.writes[1:] == [by_two.writes[1]]

    gone, by_gone = new_cycle()
    assert gone.start_chunks(200, list(SSE_HEADERS), loop)
    gone.disconnected = True
    await asyncio.sleep(0)
    assert by_gone.writes == [] and not gone.write_chunk(b"x")

    failed, by_failed = new_cycle()
    assert failed.start_chunks(200, list(SSE_HEADERS), loop)
    by_failed.close()  # the relay raised before its first chunk: uvicorn closes the connection
    await asyncio.sleep(0)
    assert by_failed.writes == []

    fallback, by_send = new_cycle(default_headers=DEFAULT_HEADERS)
    assert fallback.start_chunks(200, list(SSE_HEADERS), loop)
    await fallback.send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})  # a held head goes first
    assert by_send.writes == by_two.writes[:2]


async def test_a_stream_answer_sends_its_head_with_a_first_chunk_in_hand_and_at_once_when_it_waits() -> None:
    from router.answers import LastChunk, StreamAnswer

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    ready, in_hand = new_cycle()

    async def relay() -> Any:
        yield b"data: 1\n\n"  # the relay has the upstream's first chunk when the answer starts
        yield LastChunk(b"data: [DONE]\n\n")

    await StreamAnswer(relay(), list(SSE_HEADERS))({"type": "http"}, receive, ready.send)  # type: ignore[arg-type]
    assert len(in_hand.writes) == 2 and in_hand.writes[0].endswith(b"chunked\r\n\r\n9\r\ndata: 1\n\n\r\n")

    slow, waits = new_cycle()
    first = asyncio.Event()

    async def waiting() -> Any:
        await first.wait()
        yield LastChunk(b"data: [DONE]\n\n")

    answer = asyncio.create_task(StreamAnswer(waiting(), list(SSE_HEADERS))({"type": "http"}, receive, slow.send))  # type: ignore[arg-type]
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(waits.writes) == 1 and waits.writes[0].endswith(b"chunked\r\n\r\n")  # the status did not wait
    first.set()
    await answer
    assert waits.writes[1:] == [b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"] and slow.response_complete


async def test_a_client_that_leaves_a_stream_is_seen_by_the_protocol_without_a_watching_task() -> None:
    from router.answers import StreamAnswer

    ended = asyncio.Event()
    received: list[str] = []

    async def chunks() -> Any:
        try:
            while True:
                yield b"data: tick\n\n"
                await asyncio.sleep(0.01)
        finally:
            ended.set()  # the relay is closed: settled, the upstream released

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return

        async def counting_receive() -> Any:
            received.append("receive")
            return await receive()

        # The fast routes read the body first; the stream then needs no receive to see the client leave.
        await StreamAnswer(chunks(), list(SSE_HEADERS))(scope, counting_receive, send)  # type: ignore[arg-type]

    # uvicorn's access log off, as the gateway runs it: the answer writes directly
    async with serving(app, access_log=False) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        await reader.readuntil(b"data: tick\n\n\r\n")
        writer.close()  # the client leaves mid-stream
        await asyncio.wait_for(ended.wait(), 5)
        assert received == []  # the connection told the stream; no task waited on receive


async def test_watching_for_the_client_needs_the_gateways_protocol() -> None:
    cycle, _ = new_cycle()  # a cycle no JsonErrorHttpProtocol started: nothing will tell it
    assert not cycle.watch_gone(lambda: None)
    cycle._told_gone = True
    calls: list[int] = []
    assert cycle.watch_gone(lambda: calls.append(1)) and cycle._on_gone is not None
    assert cycle.watch_gone(None) and cycle._on_gone is None
    cycle.disconnected = True
    assert not cycle.watch_gone(lambda: calls.append(1))  # already gone: receive says so at once
    assert calls == []
