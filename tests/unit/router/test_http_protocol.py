"""router.http_protocol: an answer with a length is one write; a stream's head goes out before its body (by messages);
one keep-alive timer a connection. Streams written directly to the cycle: ``test_http_streams``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE
from uvicorn.server import ServerState

from router.http_protocol import BAD_NAME_BYTES, BAD_VALUE_BYTES, JsonErrorHttpProtocol
from tests.fakes.http_cycle import DEFAULT_HEADERS, Transport, new_cycle, serving, start_message


async def test_an_answer_with_a_length_is_one_write_of_head_and_body() -> None:
    cycle, transport = new_cycle()
    await cycle.send(start_message(headers=[(b"content-type", b"application/json"), (b"content-length", b"2")]))
    assert transport.writes == []
    await cycle.send({"type": "http.response.body", "body": b"{}"})
    (written,) = transport.writes
    assert written.startswith(b"HTTP/1.1 200 OK\r\n") and written.endswith(b"content-length: 2\r\n\r\n{}")
    assert cycle.response_complete and cycle.transport is transport


async def test_a_body_in_parts_writes_the_head_with_the_first() -> None:
    cycle, transport = new_cycle()
    await cycle.send(start_message(headers=[(b"content-length", b"6")]))
    await cycle.send({"type": "http.response.body", "body": b"abc", "more_body": True})
    await cycle.send({"type": "http.response.body", "body": b"def"})
    assert len(transport.writes) == 2 and transport.writes[0].endswith(b"\r\n\r\nabc") and transport.writes[1] == b"def"


async def test_a_streamed_answer_sends_its_head_before_any_chunk() -> None:
    cycle, transport = new_cycle()
    await cycle.send(start_message(headers=[(b"content-type", b"text/event-stream")]))
    (head,) = transport.writes
    assert b"transfer-encoding: chunked" in head and head.endswith(b"\r\n\r\n")
    await cycle.send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    await cycle.send({"type": "http.response.body", "body": b""})
    assert transport.writes[1:] == [b"9\r\ndata: 1\n\n\r\n", b"0\r\n\r\n"]


async def test_empty_bodies_and_head_requests_still_send_the_head() -> None:
    cycle, transport = new_cycle()
    await cycle.send(start_message(204))
    await cycle.send({"type": "http.response.body", "body": b""})
    assert transport.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]

    cycle, transport = new_cycle(method="HEAD")
    await cycle.send(start_message(headers=[(b"content-length", b"10")]))
    await cycle.send({"type": "http.response.body", "body": b""})
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"content-length: 10\r\n\r\n")


async def test_a_connection_not_kept_alive_is_closed_after_the_one_write() -> None:
    cycle, transport = new_cycle(keep_alive=False)
    await cycle.send(start_message(headers=[(b"content-length", b"1")]))
    await cycle.send({"type": "http.response.body", "body": b"x"})
    assert len(transport.writes) == 1 and b"connection: close" in transport.writes[0] and transport.closed


async def test_a_client_gone_before_the_body_writes_nothing() -> None:
    cycle, transport = new_cycle()
    await cycle.send(start_message(headers=[(b"content-length", b"1")]))
    cycle.disconnected = True
    await cycle.send({"type": "http.response.body", "body": b"x"})
    assert transport.writes == [] and cycle.transport is transport


_HEADERS = [(b"content-type", b"application/json"), (b"x-request-id", b"req-1"), (b"content-length", b"11")]


async def test_a_whole_answer_written_directly_is_the_same_bytes_as_sent_by_messages() -> None:
    for keep_alive in (True, False):
        sent, by_send = new_cycle(keep_alive=keep_alive, default_headers=DEFAULT_HEADERS)
        await sent.send(start_message(201, list(_HEADERS)))
        await sent.send({"type": "http.response.body", "body": b'{"ok":true}'})
        done: list[int] = []
        direct, by_write = new_cycle(keep_alive=keep_alive, default_headers=DEFAULT_HEADERS, on_response=lambda: done.append(1))
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
    sent, by_send = new_cycle(keep_alive=True, default_headers=DEFAULT_HEADERS)
    await sent.send(start_message(200, list(headers)))
    await sent.send({"type": "http.response.body", "body": b'{"ok":true}'})
    direct, by_write = new_cycle(keep_alive=True, default_headers=DEFAULT_HEADERS)
    assert direct.write_whole(200, list(headers), b'{"ok":true}') is True
    assert by_write.writes == by_send.writes
    unsized = [h for h in headers if h[0] != b"content-length"]  # a stream's head: no length, chunked
    sent, by_send = new_cycle(keep_alive=True, default_headers=DEFAULT_HEADERS)
    await sent.send(start_message(200, list(unsized)))
    streamed, by_chunks = new_cycle(keep_alive=True, default_headers=DEFAULT_HEADERS)
    assert streamed.start_chunks(200, list(unsized)) is True
    assert by_chunks.writes == by_send.writes[:1]


async def test_a_connection_close_header_ends_the_connection_after_a_direct_write() -> None:
    cycle, transport = new_cycle()
    headers = [(b"connection", b"Close"), (b"content-length", b"1")]
    assert cycle.write_whole(200, headers, b"x") is True
    (written,) = transport.writes
    assert written.count(b"connection") == 1 and transport.closed and not cycle.keep_alive


async def test_a_direct_write_leaves_to_send_what_send_must_do() -> None:
    cycle, transport = new_cycle(method="HEAD")
    assert cycle.write_whole(200, [(b"content-length", b"1")], b"x") is False
    cycle, transport = new_cycle()
    cycle.flow.write_paused = True  # a slow client: send waits for the drain
    assert cycle.write_whole(200, [(b"content-length", b"1")], b"x") is False
    cycle, transport = new_cycle()
    assert cycle.write_whole(200, [(b"x-bad", b"a\r\nset-cookie: y"), (b"content-length", b"1")], b"x") is False
    assert transport.writes == [] and not cycle.response_started  # send raises on the same header
    await cycle.send(start_message(headers=[(b"content-length", b"1")]))
    assert cycle.write_whole(200, [(b"content-length", b"1")], b"x") is False  # already started
    cycle, transport = new_cycle()
    cycle.disconnected = True  # send returns quietly
    assert cycle.write_whole(200, [(b"content-length", b"1")], b"x") is False and transport.writes == []


async def test_a_json_answer_writes_directly_to_the_cycle_and_by_messages_behind_a_wrapper() -> None:
    from router.answers import JsonAnswer

    cycle, transport = new_cycle()
    messages: list[dict[str, Any]] = []

    async def wrapped(message: Any) -> None:
        messages.append(message)
        await cycle.send(message)

    await JsonAnswer(b"{}", [(b"content-type", b"application/json")])({"type": "http"}, None, cycle.send)  # type: ignore[arg-type]
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"content-length: 2\r\n\r\n{}")
    cycle, transport = new_cycle()
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
        cycle, transport = new_cycle(default_headers=DEFAULT_HEADERS)
        assert cycle.write_whole(200, [*headers, (b"content-length", b"0")], b"") is False
        assert not cycle.start_chunks(200, headers) and transport.writes == []
    cycle, transport = new_cycle()
    assert cycle.write_whole(200, [(b"x-a", b"tab\tand space are fine"), (b"content-length", b"0")], b"") is True


async def test_the_servers_default_headers_are_read_afresh_when_uvicorn_replaces_them() -> None:
    for date in (b"Sun, 06 Dec 2026 10:00:00 GMT", b"Sun, 06 Dec 2026 10:00:01 GMT"):
        defaults = [(b"date", date), (b"server", b"sluicegate")]  # a new list each second, as uvicorn's tick makes it
        for _ in range(2):
            cycle, transport = new_cycle(default_headers=defaults)
            assert cycle.write_whole(200, [(b"content-length", b"0")], b"")
            assert b"date: " + date + b"\r\nserver: sluicegate\r\n" in transport.writes[0]
    cycle, transport = new_cycle(default_headers=[(b"Connection", b"keep-alive, Close")])
    assert cycle.write_whole(200, [(b"content-length", b"0")], b"") and transport.closed and not cycle.keep_alive
    assert transport.writes[0].count(b"onnection") == 1
    cycle, transport = new_cycle(default_headers=[(b"server", b"bad\x01")])
    assert not cycle.write_whole(200, [(b"content-length", b"0")], b"") and transport.writes == []


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        await send(start_message(headers=[(b"content-type", b"text/event-stream")]))
        await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": b"data: late\n\n"})
        return
    body = b'{"ok":true}'
    await send(start_message(headers=[(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]))
    await send({"type": "http.response.body", "body": body})


async def test_a_real_server_answers_keep_alive_requests_and_streams_heads_early() -> None:
    async with serving(_app) as port:
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


async def test_keep_alive_closes_an_idle_connection_after_the_timeout_and_no_busy_one() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            await asyncio.sleep(0.6)  # longer than the keep-alive timeout: a request under way is never cut
        await send(start_message(headers=[(b"content-length", b"2")]))
        await send({"type": "http.response.body", "body": b"{}"})

    loop = asyncio.get_running_loop()

    async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str = "/") -> None:
        writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
        assert await reader.readexactly(2) == b"{}"

    async with serving(app, timeout_keep_alive=0.4) as port:
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


async def test_keep_alive_arms_one_timer_for_many_requests_and_cancels_it_when_the_connection_goes() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send(start_message(headers=[(b"content-length", b"2")]))
        await send({"type": "http.response.body", "body": b"{}"})

    config = uvicorn.Config(app, access_log=False, proxy_headers=False, timeout_keep_alive=30, log_config=None)
    config.load()
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
