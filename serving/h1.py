"""A pooled HTTP/1.1 client for one upstream origin: keep-alive connections, httptools' parser.

The engines' requests are all alike: a POST of a JSON body to one origin, an
answer read whole or relayed chunk by chunk. aiohttp's client does far more
per request (request and response objects with their header multidicts,
tracing signals, a cookie jar, a timeout context manager, a stream reader):
on the gateway's hot path it cost more than the gateway's own work. This one
writes the request in one call, parses the answer in C (llhttp, through
``httptools``, which uvicorn already uses for the server side) and hands the
body on as it arrives.

- Connections are kept alive and reused, last in first out, at most ``limit``
  at once; a request that finds them all busy waits for one up to the connect
  timeout (``PoolTimeout``).
- A connection idle for more than ``keepalive_s``, or one the upstream closed
  or answered ``Connection: close`` on, is not reused.
- A request sent on a reused connection that the upstream closes before any
  byte of the answer came is sent once more, on a new connection: an idle
  connection may be closed by the upstream while the request is on its way,
  and then it was never read.
- Timeouts: ``connect_s`` to open a connection, ``read_s`` without a byte from
  the upstream while an answer is due, ``total_s`` for the whole exchange.
  Expiry raises ``TimeoutError`` and closes the connection.
- A body not read to its end (a stream whose client went away) closes its
  connection: the upstream sees the disconnect and stops generating.
- Flow control: reading from the upstream pauses while more than
  ``_HIGH_WATER`` bytes wait for the consumer.

Failures are ``H1Error`` subclasses (or ``TimeoutError``); ``serving.http_transport``
maps them to the gateway's errors, as it does aiohttp's.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import httptools

from core.activity import ACTIVITY

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


class H1Error(Exception):
    """The exchange failed below HTTP: no status, or no whole answer."""


class ConnectError(H1Error):
    """No connection: refused, unreachable, unresolvable, or TLS failed. Nothing was sent."""


class ConnectTimeout(H1Error):
    """No connection within the connect timeout. Nothing was sent."""


class PoolTimeout(H1Error):
    """Every connection stayed busy for the whole connect timeout. Nothing was sent."""


class Disconnected(H1Error):
    """The upstream closed the connection before the whole answer."""


class BadResponse(H1Error):
    """The upstream's bytes are not an HTTP/1.1 response."""


class _Connection(asyncio.Protocol):
    """One connection, and the answer it is receiving: the parser's callbacks fill it."""

    def __init__(self, pool: H1Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.dropped = False
        self.reusable = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._last = 0.0
        self._read_s = 0.0
        self._paused = False
        self._reset_answer()

    def _reset_answer(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.head_done = False
        self.complete = False
        self.received = False
        self.exc: BaseException | None = None
        self._until_eof = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        ACTIVITY.n += 1  # an answer's bytes: work a client waits for (core.activity)
        self.received = True
        self._last = self.pool.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("the upstream switched protocols"))
        except httptools.HttpParserError:
            self._fail(BadResponse("the upstream's answer is not HTTP/1.1"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self.head_done and self._until_eof and exc is None and not self.complete:
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        elif not self.complete and self.exc is None:
            self._fail(Disconnected("the upstream closed the connection early"), close=False)
        self.pool._lost(self)

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.head_done = True
        headers = self.headers
        self._until_eof = "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "")
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.reusable = self.parser.should_keep_alive()
        self._wake()

    # the exchange

    def start(self, data: bytes, deadline: float, read_s: float) -> None:
        """Send one request; the answer fills this connection as it comes."""
        self._reset_answer()
        self.reusable = False
        self._deadline, self._read_s = deadline, read_s
        loop = self.pool.loop
        self._last = loop.time()
        self._timer = loop.call_at(min(deadline, self._last + read_s), self._check_time)
        assert self.transport is not None
        self.transport.write(data)

    def _check_time(self) -> None:
        now = self.pool.loop.time()
        due = min(self._deadline, self._last + self._read_s)
        if now >= due:
            self._timer = None
            self._fail(TimeoutError(), close=True)
        else:
            self._timer = self.pool.loop.call_at(due, self._check_time)

    def _fail(self, exc: BaseException, *, close: bool = True) -> None:
        self.exc = exc
        self.reusable = False
        if close and self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until the parser has something new (head, body bytes, the end) or the exchange failed."""
        waiter = self._waiter = self.pool.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def take(self) -> bytes:
        """The body bytes received and not yet taken."""
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def finish(self) -> None:
        """The exchange is over (answered, failed or abandoned): stop its clock."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not (self.complete and self.reusable) and not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()


class Response:
    """An answer whose head has arrived: ``status``, ``headers`` (lower-case names), then the body."""

    __slots__ = ("_conn", "_done", "headers", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._done = False
        self.status = conn.status
        self.headers = conn.headers

    async def read(self) -> bytes:
        """The whole body; the connection goes back to the pool."""
        conn = self._conn
        parts: list[bytes] = []
        try:
            while True:
                if conn.chunks:
                    parts.append(conn.take())  # taken as it comes: reading never stays paused
                if conn.complete:
                    return parts[0] if len(parts) == 1 else b"".join(parts)
                if conn.exc is not None:
                    raise conn.exc
                await conn.wait()
        finally:
            self.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in the pieces received so far; the connection is released at the end."""
        conn = self._conn
        try:
            while True:
                if conn.chunks:
                    yield conn.take()
                elif conn.complete:
                    return
                elif conn.exc is not None:
                    raise conn.exc
                else:
                    await conn.wait()
        finally:
            self.release()

    def release(self) -> None:
        """Give the connection back (reused only when its answer was read to the end); idempotent."""
        if not self._done:
            self._done = True
            self._conn.finish()
            self._conn.pool._release(self._conn)


class H1Pool:
    """Keep-alive connections to the origin (scheme, host, port) of ``base_url``."""

    def __init__(
        self,
        base_url: str,
        *,
        limit: int,
        connect_s: float,
        read_s: float,
        total_s: float,
        keepalive_s: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an http:// or https:// URL with a host")
        self.loop = asyncio.get_running_loop()
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_line = f"host: {host}{'' if default_port else f':{self.port}'}\r\n".encode("latin-1")
        self._ssl = (ssl_context or ssl.create_default_context()) if self.tls else None
        self.limit = max(1, limit)
        self.connect_s, self.read_s, self.total_s, self.keepalive_s = connect_s, read_s, total_s, keepalive_s
        self._idle: list[_Connection] = []
        self._open = 0  # connections opening, busy or idle
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closing = False

    @property
    def open_connections(self) -> int:
        return self._open

    def head(self, method: bytes, target: str, headers: Mapping[str, str]) -> bytes:
        """The request line for ``method target`` (a path and query on the origin) and ``headers``: encode once, send often."""
        lines = [b"%s %s HTTP/1.1\r\n" % (method, target.encode("latin-1")), self._host_line]
        lines += [f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items()]
        return b"".join(lines)

    async def request(self, head: bytes, body: bytes, extra: Mapping[str, str] | None = None) -> Response:
        """Send ``head`` (from ``head()``), any ``extra`` headers and ``body``; returns once the answer's head is in."""
        parts = [head]
        if extra:
            parts += [f"{k}: {v}\r\n".encode("latin-1") for k, v in extra.items()]
        parts.append(b"content-length: %d\r\n\r\n" % len(body))
        parts.append(body)
        data = b"".join(parts)
        deadline = self.loop.time() + self.total_s
        for attempt in (0, 1):
            conn, reused = await self._acquire()
            conn.start(data, deadline, self.read_s)
            try:
                while not conn.head_done:
                    if conn.exc is not None:
                        raise conn.exc
                    await conn.wait()
            except Disconnected:
                conn.finish()
                self._release(conn)
                if reused and attempt == 0 and not conn.received:
                    continue  # the upstream closed an idle connection as the request went out
                raise
            except BaseException:
                conn.finish()
                self._release(conn)
                raise
            return Response(conn)
        raise Disconnected("the upstream closed the connection early")  # not reached: the second attempt raises

    async def _acquire(self) -> tuple[_Connection, bool]:
        if self._closing:
            raise ConnectError("the client is closed")
        now = self.loop.time()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn, True
            self._drop(conn)
        if self._open >= self.limit:
            handed = await self._wait_for_turn()
            if handed is not None:
                return handed, True
        self._open += 1
        try:
            return await self._connect(), False
        except BaseException:
            self._open -= 1
            self._pass_on(None)
            raise

    async def _wait_for_turn(self) -> _Connection | None:
        """Wait for a released connection (returned) or a free slot to open one (None)."""
        waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
        self._waiters.append(waiter)
        timer = self.loop.call_later(self.connect_s, _expire, waiter)
        try:
            return await waiter
        except BaseException:
            # Timed out or cancelled: what was handed over in the meantime goes to the next in line.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._pass_on(waiter.result())
            raise
        finally:
            timer.cancel()

    async def _connect(self) -> _Connection:
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None
                ),
                self.connect_s,
            )
        except TimeoutError:
            raise ConnectTimeout("no connection within the connect timeout") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect: {type(exc).__name__}") from None
        return conn

    def _release(self, conn: _Connection) -> None:
        if conn.complete and conn.reusable and not conn.closed and not self._closing:
            conn.idle_since = self.loop.time()
            self._pass_on(conn)
            return
        self._drop(conn)
        self._pass_on(None)

    def _pass_on(self, handed: _Connection | None) -> None:
        """A free connection, or a free slot (None), to the first waiter still waiting; else to the idle list."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(handed)
                return
        if handed is not None:
            self._idle.append(handed)

    def _drop(self, conn: _Connection) -> None:
        """Forget ``conn`` (closing it); counted once however often it is dropped."""
        if conn.dropped:
            return
        conn.dropped = True
        self._open -= 1
        if not conn.closed and conn.transport is not None:
            conn.closed = True
            conn.transport.close()

    def _lost(self, conn: _Connection) -> None:
        """The connection closed under us; an idle one is forgotten now, a busy one when released."""
        if conn in self._idle:
            self._idle.remove(conn)
            self._drop(conn)
            self._pass_on(None)

    async def close(self) -> None:
        self._closing = True
        for conn in list(self._idle):
            self._drop(conn)
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectError("the client is closed"))


def _expire(waiter: asyncio.Future[_Connection | None]) -> None:
    if not waiter.done():
        waiter.set_exception(PoolTimeout("no free connection within the connect timeout"))
