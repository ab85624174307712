"""router.http_protocol: an answer with a length is one write; a stream's head goes out before its body."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from router.http_protocol import JsonErrorHttpProtocol, _OneWriteCycle


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


def _cycle(method: str = "POST", keep_alive: bool = True) -> tuple[RequestResponseCycle, _Transport]:
    transport = _Transport()
    cycle = RequestResponseCycle(
        scope={"type": "http", "method": method, "path": "/", "http_version": "1.1", "headers": []},
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: None,
    )
    cycle.__class__ = _OneWriteCycle
    return cycle, transport


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
