"""router.http_protocol: an answer with a length is one write; a stream's head goes out before its body."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, RequestResponseCycle

from router.http_protocol import BAD_NAME_BYTES, BAD_VALUE_BYTES, JsonErrorHttpProtocol, OneWriteCycle


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def _cycle(
    method: str = "POST", keep_alive: bool = True, default_headers: list[tuple[bytes, bytes]] | None = None,
    on_response: Any = lambda: None,
) -> tuple[OneWriteCycle, _Transport]:
    transport = _Transport()
    cycle = RequestResponseCycle(
        scope={"type": "http", "method": method, "path": "/", "http_version": "1.1", "headers": []},
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=default_headers or [],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=on_response,
    )
    cycle.__class__ = OneWriteCycle
    return cycle, transport  # type: ignore[return-value]


def _start(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": headers or []}


async def test_an_answer_with_a_length_is_one_write_of_head_and_body() -> None:
    cycle, transport = _cycle()
    await cycle.send(_start(headers=[(b"content-type", b"application/json"), (b"content-length", b"2")]))
    assert transport.writes == []
    await cycle.send({"type": "http.response.body", "body": b"{}"})
    (written,) = transport.writes
    assert written.startswith(b"HTTP/1.1 200 OK\r\n") and written.endswith(b"content-length: 2\r\n\r\n{}")
    assert cycle.response_complete and cycle.transport is transport


async def test_a_body_in_parts_writes_the_head_with_the_first() -> None:
    cycle, transport = _cycle()
    await cycle.send(_start(headers=[(b"content-length", b"6")]))
    await cycle.send({"type": "http.response.body", "body": b"abc", "more_body": True})
    await cycle.send({"type": "http.response.body", "body": b"def"})
    assert len(transport.writes) == 2 and transport.writes[0].endswith(b"\r\n\r\nabc") and transport.writes[1] == b"def"


async def test_a_streamed_answer_sends_its_head_before_any_chunk() -> None:
    cycle, transport = _cycle()
    await cycle.send(_start(headers=[(b"content-type", b"text/event-stream")]))
    (head,) = transport.writes
    assert b"transfer-encoding: chunked" in head and head.endswith(b"\r\n\r\n")
    await cycle.send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    await cycle.send({"type": "http.response.body", "body": b""})
    assert transport.writes[1:] == [b"9\r\ndata: 1\n\n\r\n", b"0\r\n\r\n"]


async def test_empty_bodies_and_head_requests_still_send_the_head() -> None:
    cycle, transport = _cycle()
    await cycle.send(_start(204))
    await cycle.send({"type": "http.response.body", "body": b""})
    assert transport.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]

    cycle, transport = _cycle(method="HEAD")
    await cycle.send(_start(headers=[(b"content-length", b"10")]))
    await cycle.send({"type": "http.response.body", "body": b""})
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"content-length: 10\r\n\r\n")


async def test_a_connection_not_kept_alive_is_closed_after_the_one_write() -> None:
    cycle, transport = _cycle(keep_alive=False)
    await cycle.send(_start(headers=[(b"content-length", b"1")]))
    await cycle.send({"type": "http.response.body", "body": b"x"})
    assert len(transport.writes) == 1 and b"connection: close" in transport.writes[0] and transport.closed


async def test_a_client_gone_before_the_body_writes_nothing() -> None:
    cycle, transport = _cycle()
    await cycle.send(_start(headers=[(b"content-length", b"1")]))
    cycle.disconnected = True
    await cycle.send({"type": "http.response.body", "body": b"x"})
    assert transport.writes == [] and cycle.transport is transport


_DEFAULTS = [(b"Date", b"Sun, 06 Dec 2026 10:00:00 GMT"), (b"server", b"sluicegate")]
_HEADERS = [(b"content-type", b"application/json"), (b"x-request-id", b"req-1"), (b"content-length", b"11")]


async def test_a_whole_answer_written_directly_is_the_same_bytes_as_sent_by_messages() -> None:
    for keep_alive in (True, False):
        sent, by_send = _cycle(keep_alive=keep_alive, default_headers=_DEFAULTS)
        await sent.send(_start(201, list(_HEADERS)))
        await sent.send({"type": "http.response.body", "body": b'{"ok":true}'})
        done: list[int] = []
        direct, by_write = _cycle(keep_alive=keep_alive, default_headers=_DEFAULTS, on_response=lambda: done.append(1))
        assert direct.write_whole(201, list(_HEADERS), b'{"ok":true}') is True
        assert by_write.writes == by_send.writes and len(by_write.writes) == 1
        assert (b"connection: close" in by_write.writes[0]) is (not keep_alive)
        assert by_write.closed is (not keep_alive) and done == [1]
        assert direct.response_started and direct.response_complete and direct.message_event.is_set()


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Content-Type", b"application/json"), (b"X-Request-ID", b"req-1"), (b"content-length", b"11")],  # names send lowers
        [(b"content-length", b"11")],
    ],
)
async def test_a_direct_write_lowers_names_and_frames_lines_as_send_does(headers: list[tuple[bytes, bytes]]) -> None:
    sent, by_send = _cycle(keep_alive=True, default_headers=_DEFAULTS)
    await sent.send(_start(200, list(headers)))
    await sent.send({"type": "http.response.body", "body": b'{"ok":true}'})
    direct, by_write = _cycle(keep_alive=True, default_headers=_DEFAULTS)
    assert direct.write_whole(200, list(headers), b'{"ok":true}') is True
    assert by_write.writes == by_send.writes
    unsized = [h for h in headers if h[0] != b"content-length"]  # a stream's head: no length, chunked
    sent, by_send = _cycle(keep_alive=True, default_headers=_DEFAULTS)
    await sent.send(_start(200, list(unsized)))
    streamed, by_chunks = _cycle(keep_alive=True, default_headers=_DEFAULTS)
    assert streamed.start_chunks(200, list(unsized)) is True
    assert by_chunks.writes == by_send.writes[:1]


async def test_a_connection_close_header_ends_the_connection_after_a_direct_write() -> None:
    cycle, transport = _cycle()
    headers = [(b"connection", b"Close"), (b"content-length", b"1")]
    assert cycle.write_whole(200, headers, b"x") is True
    (written,) = transport.writes
    assert written.count(b"connection") == 1 and transport.closed and not cycle.keep_alive


async def test_a_direct_write_leaves_to_send_what_send_must_do() -> None:
    cycle, transport = _cycle(method="HEAD")
    assert cycle.write_whole(200, [(b"content-length", b"1")], b"x") is False
    cycle, transport = _cycle()
    cycle.flow.write_paused = True  # a slow client: send waits for the drain
    assert cycle.write_whole(200, [(b"content-length", b"1")], b"x") is False
    cycle, transport = _cycle()
    assert cycle.write_whole(200, [(b"x-bad", b"a\r\nset-cookie: y"), (b"content-length", b"1")], b"x") is False
    assert transport.writes == [] and not cycle.response_started  # send raises on the same header
    await cycle.send(_start(headers=[(b"content-length", b"1")]))
    assert cycle.write_whole(200, [(b"content-length", b"1")], b"x") is False  # already started
    cycle, transport = _cycle()
    cycle.disconnected = True  # send returns quietly
    assert cycle.write_whole(200, [(b"content-length", b"1")], b"x") is False and transport.writes == []


async def test_a_json_answer_writes_directly_to_the_cycle_and_by_messages_behind_a_wrapper() -> None:
    from router.answers import JsonAnswer

    cycle, transport = _cycle()
    messages: list[dict[str, Any]] = []

    async def wrapped(message: Any) -> None:
        messages.append(message)
        await cycle.send(message)

    await JsonAnswer(b"{}", [(b"content-type", b"application/json")])({"type": "http"}, None, cycle.send)  # type: ignore[arg-type]
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"content-length: 2\r\n\r\n{}")
    cycle, transport = _cycle()
    await JsonAnswer(b"{}", [(b"content-type", b"application/json")])({"type": "http"}, None, wrapped)  # type: ignore[arg-type]
    assert [m["type"] for m in messages] == ["http.response.start", "http.response.body"]
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"\r\n\r\n{}")


def test_the_bytes_refused_in_a_head_are_those_uvicorns_patterns_refuse() -> None:
    for byte in range(256):
        one = bytes([byte])
        assert (byte in BAD_NAME_BYTES) is bool(HEADER_RE.search(one)), byte
        assert (byte in BAD_VALUE_BYTES) is bool(HEADER_VALUE_RE.search(one)), byte


async def test_a_bad_byte_anywhere_in_any_header_leaves_the_answer_to_send() -> None:
    for headers in ([(b"x-a", b"ok"), (b"x b", b"ok")], [(b"x-a", b"ok\x00"), (b"x-b", b"ok")], [(b"x-a", b"ok"), (b"x-b", b"\x7f")]):
        cycle, transport = _cycle(default_headers=_DEFAULTS)
        assert cycle.write_whole(200, [*headers, (b"content-length", b"0")], b"") is False
        assert not cycle.start_chunks(200, headers) and transport.writes == []
    cycle, transport = _cycle()
    assert cycle.write_whole(200, [(b"x-a", b"tab\tand space are fine"), (b"content-length", b"0")], b"") is True


async def test_the_servers_default_headers_are_read_afresh_when_uvicorn_replaces_them() -> None:
    for date in (b"Sun, 06 Dec 2026 10:00:00 GMT", b"Sun, 06 Dec 2026 10:00:01 GMT"):
        defaults = [(b"date", date), (b"server", b"sluicegate")]  # a new list each second, as uvicorn's tick makes it
        for _ in range(2):
            cycle, transport = _cycle(default_headers=defaults)
            assert cycle.write_whole(200, [(b"content-length", b"0")], b"")
            assert b"date: " + date + b"\r\nserver: sluicegate\r\n" in transport.writes[0]
    cycle, transport = _cycle(default_headers=[(b"Connection", b"keep-alive, Close")])
    assert cycle.write_whole(200, [(b"content-length", b"0")], b"") and transport.closed and not cycle.keep_alive
    assert transport.writes[0].count(b"onnection") == 1
    cycle, transport = _cycle(default_headers=[(b"server", b"bad\x01")])
    assert not cycle.write_whole(200, [(b"content-length", b"0")], b"") and transport.writes == []


_SSE = [(b"content-type", b"text/event-stream"), (b"x-request-id", b"req-1")]


async def test_a_stream_written_directly_is_the_same_bytes_as_sent_by_messages() -> None:
    for keep_alive in (True, False):
        sent, by_send = _cycle(keep_alive=keep_alive, default_headers=_DEFAULTS)
        await sent.send(_start(200, list(_SSE)))
        for body, more in ((b"data: 1\n\n", True), (b"", True), (b"data: [DONE]\n\n", True), (b"", False)):
            await sent.send({"type": "http.response.body", "body": body, "more_body": more})
        done: list[int] = []
        direct, by_write = _cycle(keep_alive=keep_alive, default_headers=_DEFAULTS, on_response=lambda: done.append(1))
        assert direct.start_chunks(200, list(_SSE))
        assert direct.write_chunk(b"data: 1\n\n") and direct.write_chunk(b"") and direct.write_chunk(b"data: [DONE]\n\n")
        assert done == [] and direct.end_chunks() and done == [1]
        # send writes an empty chunk as an empty write, which sends nothing
        assert by_write.writes == [w for w in by_send.writes if w] and by_write.closed is (not keep_alive)
        assert direct.response_complete and not direct.write_chunk(b"x") and not direct.end_chunks()


async def test_a_stream_leaves_to_send_what_send_must_do() -> None:
    cycle, transport = _cycle()
    assert not cycle.start_chunks(200, [(b"content-length", b"3")])  # a length: not a stream to frame here
    assert not cycle.start_chunks(204, [])
    assert not cycle.write_chunk(b"x") and transport.writes == []  # nothing started
    assert cycle.start_chunks(200, list(_SSE))
    cycle.flow.write_paused = True
    assert not cycle.write_chunk(b"x") and not cycle.end_chunks()
    cycle.flow.write_paused = False
    cycle.disconnected = True
    assert not cycle.write_chunk(b"x") and len(transport.writes) == 1


async def test_a_stream_answer_writes_its_chunks_directly_and_by_messages_when_writes_pause() -> None:
    from router.answers import StreamAnswer

    cycle, transport = _cycle()
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

    await StreamAnswer(chunks(), list(_SSE))({"type": "http"}, receive, cycle.send)  # type: ignore[arg-type]
    assert transport.writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n")  # the head with the first
    assert transport.writes[1:] == [b"9\r\ndata: 2\n\n\r\n", b"9\r\ndata: 3\n\n\r\n", b"0\r\n\r\n"]
    assert cycle.response_complete


async def test_a_streams_last_chunk_goes_out_in_one_write_with_its_end() -> None:
    from router.answers import LastChunk, StreamAnswer

    direct, by_write = _cycle(default_headers=_DEFAULTS)
    assert direct.start_chunks(200, list(_SSE)) and direct.end_chunks(b"data: [DONE]\n\n")
    apart, by_two = _cycle(default_headers=_DEFAULTS)
    assert apart.start_chunks(200, list(_SSE)) and apart.write_chunk(b"data: [DONE]\n\n") and apart.end_chunks()
    assert by_write.writes == [by_two.writes[0], b"".join(by_two.writes[1:])]  # the same bytes, one write fewer

    done: list[int] = []
    cycle, transport = _cycle(on_response=lambda: done.append(1))
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

    await StreamAnswer(chunks(), list(_SSE))({"type": "http"}, receive, cycle.send)  # type: ignore[arg-type]
    assert transport.writes[0].endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n")
    assert transport.writes[1:] == [b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"]
    assert after_last == ["closed"] and done == [1] and cycle.response_complete

    # Writes paused when the last chunk comes: it goes through send, which waits for the drain, and so does the end.
    paused, slow = _cycle()

    async def pausing() -> Any:
        yield b"data: 1\n\n"
        paused.flow.write_paused = True
        asyncio.get_running_loop().call_later(0.05, paused.flow.resume_writing)
        yield LastChunk(b"data: [DONE]\n\n")

    await StreamAnswer(pausing(), list(_SSE))({"type": "http"}, receive, paused.send)  # type: ignore[arg-type]
    assert slow.writes[1:] == [b"e\r\ndata: [DONE]\n\n\r\n", b"0\r\n\r\n"]
    assert paused.response_complete


async def test_a_held_head_goes_out_with_the_first_chunk_or_alone_at_the_loops_next_round() -> None:
    loop = asyncio.get_running_loop()
    apart, by_two = _cycle(default_headers=_DEFAULTS)
    assert apart.start_chunks(200, list(_SSE)) and apart.write_chunk(b"data: 1\n\n") and apart.end_chunks(b"data: [DONE]\n\n")

    held, by_held = _cycle(default_headers=_DEFAULTS)
    assert held.start_chunks(200, list(_SSE), loop) and by_held.writes == []
    assert held.write_chunk(b"") and by_held.writes == []  # an empty chunk carries nothing, the head neither
    assert held.write_chunk(b"data: 1\n\n") and held.end_chunks(b"data: [DONE]\n\n")
    assert by_held.writes == [by_two.writes[0] + by_two.writes[1], by_two.writes[2]]  # the same bytes, one write fewer
    await asyncio.sleep(0)
    assert len(by_held.writes) == 2  # the loop's round found nothing left to write

    ended, by_end = _cycle(default_headers=_DEFAULTS)
    assert ended.start_chunks(200, list(_SSE), loop) and ended.end_chunks(b"data: [DONE]\n\n")
    assert by_end.writes == [by_two.writes[0] + by_two.writes[2]] and ended.response_complete

    waiting, by_wait = _cycle(default_headers=_DEFAULTS)
    assert waiting.start_chunks(200, list(_SSE), loop)
    await asyncio.sleep(0)  # no chunk in this round: the status goes out on its own
    assert by_wait.writes == [by_two.writes[0]]
    assert waiting.write_chunk(b"data: 1\n\n") and by_wait.writes[1:] == [by_two.writes[1]]

    gone, by_gone = _cycle()
    assert gone.start_chunks(200, list(_SSE), loop)
    gone.disconnected = True
    await asyncio.sleep(0)
    assert by_gone.writes == [] and not gone.write_chunk(b"x")

    failed, by_failed = _cycle()
    assert failed.start_chunks(200, list(_SSE), loop)
    by_failed.close()  # the relay raised before its first chunk: uvicorn closes the connection
    await asyncio.sleep(0)
    assert by_failed.writes == []

    fallback, by_send = _cycle(default_headers=_DEFAULTS)
    assert fallback.start_chunks(200, list(_SSE), loop)
    await fallback.send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})  # a held head goes first
    assert by_send.writes == by_two.writes[:2]


async def test_a_stream_answer_sends_its_head_with_a_first_chunk_in_hand_and_at_once_when_it_waits() -> None:
    from router.answers import LastChunk, StreamAnswer

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    ready, in_hand = _cycle()

    async def relay() -> Any:
        yield b"data: 1\n\n"  # the relay has the upstream's first chunk when the answer starts
        yield LastChunk(b"data: [DONE]\n\n")

    await StreamAnswer(relay(), list(_SSE))({"type": "http"}, receive, ready.send)  # type: ignore[arg-type]
    assert len(in_hand.writes) == 2 and in_hand.writes[0].endswith(b"chunked\r\n\r\n9\r\ndata: 1\n\n\r\n")

    slow, waits = _cycle()
    first = asyncio.Event()

    async def waiting() -> Any:
        await first.wait()
        yield LastChunk(b"data: [DONE]\n\n")

    answer = asyncio.create_task(StreamAnswer(waiting(), list(_SSE))({"type": "http"}, receive, slow.send))  # type: ignore[arg-type]
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(waits.writes) == 1 and waits.writes[0].endswith(b"chunked\r\n\r\n")  # the status did not wait
    first.set()
    await answer
    assert waits.writes[1:] == [b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"] and slow.response_complete


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        await send(_start(headers=[(b"content-type", b"text/event-stream")]))
        await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": b"data: late\n\n"})
        return
    body = b'{"ok":true}'
    await send(_start(headers=[(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]))
    await send({"type": "http.response.body", "body": body})


async def test_a_real_server_answers_keep_alive_requests_and_streams_heads_early() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_app, host="127.0.0.1", port=port, http=JsonErrorHttpProtocol, lifespan="off", log_config=None))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):  # one connection, several answers
            writer.write(b"POST /unary HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 11" in head
            assert await reader.readexactly(11) == b'{"ok":true}'
        writer.write(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.25)  # before the body's 0.3 s
        assert b"transfer-encoding: chunked" in head
        assert (await reader.readuntil(b"0\r\n\r\n")).startswith(b"c\r\ndata: late\n\n")
        writer.close()
    finally:
        server.should_exit = True
        await task


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
        await StreamAnswer(chunks(), list(_SSE))(scope, counting_receive, send)  # type: ignore[arg-type]

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=JsonErrorHttpProtocol, lifespan="off", log_config=None, access_log=False)
    server = uvicorn.Server(config)  # uvicorn's access log off, as the gateway runs it: the answer writes directly
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        await reader.readuntil(b"data: tick\n\n\r\n")
        writer.close()  # the client leaves mid-stream
        await asyncio.wait_for(ended.wait(), 5)
        assert received == []  # the connection told the stream; no task waited on receive
    finally:
        server.should_exit = True
        await task


async def test_watching_for_the_client_needs_the_gateways_protocol() -> None:
    cycle, _ = _cycle()  # a cycle no JsonErrorHttpProtocol started: nothing will tell it
    assert not cycle.watch_gone(lambda: None)
    cycle._told_gone = True
    calls: list[int] = []
    assert cycle.watch_gone(lambda: calls.append(1)) and cycle._on_gone is not None
    assert cycle.watch_gone(None) and cycle._on_gone is None
    cycle.disconnected = True
    assert not cycle.watch_gone(lambda: calls.append(1))  # already gone: receive says so at once
    assert calls == []


async def test_keep_alive_closes_an_idle_connection_after_the_timeout_and_no_busy_one() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            await asyncio.sleep(0.6)  # longer than the keep-alive timeout: a request under way is never cut
        await send(_start(headers=[(b"content-length", b"2")]))
        await send({"type": "http.response.body", "body": b"{}"})

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=JsonErrorHttpProtocol, lifespan="off", log_config=None, timeout_keep_alive=0.4  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    loop = asyncio.get_running_loop()

    async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str = "/") -> None:
        writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
        assert await reader.readexactly(2) == b"{}"

    try:
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = loop.time()
        for _ in range(8):  # one request every 0.1 s for 0.8 s: two timeouts' worth, never idle for one
            await ask(reader, writer)
            await asyncio.sleep(0.1)
        assert loop.time() - started > 0.8
        await ask(reader, writer, "/slow")  # any timer armed before it came due while it ran
        await asyncio.sleep(0.25)
        await ask(reader, writer)  # the timer armed by the slow answer comes due 0.15 s into this idle stretch
        idle = loop.time()
        assert await asyncio.wait_for(reader.read(), 2) == b""  # idle: the server closes the connection
        assert 0.35 <= loop.time() - idle < 1.5
        writer.close()
    finally:
        server.should_exit = True
        await task


async def test_keep_alive_arms_one_timer_for_many_requests_and_cancels_it_when_the_connection_goes() -> None:
    class Transport(_Transport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(name, default)

        def set_write_buffer_limits(self, *args: Any, **kwargs: Any) -> None: ...

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send(_start(headers=[(b"content-length", b"2")]))
        await send({"type": "http.response.body", "body": b"{}"})

    config = uvicorn.Config(app, access_log=False, proxy_headers=False, timeout_keep_alive=30, log_config=None)
    config.load()
    from uvicorn.server import ServerState

    protocol = JsonErrorHttpProtocol(config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop())
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    timers = []
    for _ in range(3):
        protocol.data_received(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        for _ in range(5):
            await asyncio.sleep(0)
        timers.append(protocol.timeout_keep_alive_task)
    assert len(transport.writes) == 3 and timers[0] is not None and timers[0] is timers[1] is timers[2]
    protocol.connection_lost(None)
    assert protocol.timeout_keep_alive_task is None and timers[0].cancelled()
