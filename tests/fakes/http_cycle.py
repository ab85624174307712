"""Test doubles for ``router.http_protocol``: a recording transport, a bare cycle, and a real server to talk to."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from router.http_protocol import JsonErrorHttpProtocol, OneWriteCycle

# The server's own headers as uvicorn passes them (a date, a server name), and a stream's.
DEFAULT_HEADERS = [(b"Date", b"Sun, 06 Dec 2026 10:00:00 GMT"), (b"server", b"sluicegate")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"x-request-id", b"req-1")]


class Transport:
    """Records every write; closes when told."""

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

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def set_write_buffer_limits(self, *args: Any, **kwargs: Any) -> None: ...


def new_cycle(
    method: str = "POST",
    keep_alive: bool = True,
    default_headers: list[tuple[bytes, bytes]] | None = None,
    on_response: Any = lambda: None,
) -> tuple[OneWriteCycle, Transport]:
    """A cycle as the gateway's protocol makes it, on a recording transport."""
    transport = Transport()
    cycle = RequestResponseCycle(
        scope={"type": "http", "method": method, "path": "/", "http_version": "1.1", "headers": []},  # type: ignore[typeddict-item]
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


def start_message(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": headers or []}


@contextlib.asynccontextmanager
async def serving(app: Any, **options: Any) -> AsyncIterator[int]:
    """``app`` under uvicorn with the gateway's protocol on a free loopback port (yielded), until the block ends."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=JsonErrorHttpProtocol, lifespan="off", log_config=None, **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await task
