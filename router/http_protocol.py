"""The HTTP server's protocol: uvicorn's, with its own refusals in the OpenAI error shape and one write per answer.

Requests the HTTP parser cannot take (a malformed request line, an unknown
method, bytes not allowed in a header) never reach the application: uvicorn
answers them itself, in plain text. This protocol answers them as the
application answers everything else.

uvicorn writes a response's head as soon as the application starts it, and
its body when it comes: two system calls, and two TCP segments, for every
answer that is not streamed. Here the head of a response with a length
(``content-length``) waits for the body, and both go out in one write; a
streamed (chunked) response's head still goes out at once, so a client sees
the status before the first token.

The answers of the inference routes (``router.answers``) skip the ASGI
messages altogether: ``OneWriteCycle`` writes a whole answer, or a stream's
head, chunks and end, as uvicorn's ``send`` does (the same header checks,
``connection: close`` when the connection is not kept, the next pipelined
request started), a whole answer in one write, a stream's head in one write
with its first chunk where that chunk is in hand at once (otherwise alone, at
the event loop's next round), and a stream's last chunk
(``router.answers.LastChunk``) in one write with its end. A stream learns that its
client left from this protocol's ``connection_lost`` (``watch_gone``), with
no task of its own waiting on ``receive``.

A kept-alive connection has one keep-alive timer at a time, re-armed only
when it comes due (``JsonErrorHttpProtocol.on_response_complete``), where
uvicorn makes and closes a timer for every request.
"""

from __future__ import annotations

from asyncio import AbstractEventLoop
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from core.activity import ACTIVITY
from core.errors import InvalidRequest, error_body
from router import access_log

_ERROR = InvalidRequest("The request is not valid HTTP/1.1: check the request line, the method and the header bytes.", code="invalid_http")
_BODY = error_body(_ERROR)
_RESPONSE = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _BODY
)


class JsonErrorHttpProtocol(HttpToolsProtocol):
    # uvicorn arms a keep-alive timer after every answer and cancels it when the next request's bytes come: a libuv
    # timer made, started, stopped and closed per request. Here one timer waits at a time; a request that comes
    # only marks the connection busy (_idle_since None), and the timer, when due, closes the connection if it has
    # been idle for the whole timeout, or waits again for what is left of it. The same connections are closed at
    # the same times.
    _idle_since: float | None = None

    def on_response_complete(self) -> None:
        # uvicorn's, with the lazy keep-alive timer.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self._keep_alive_due)

    def _unset_keepalive_if_required(self) -> None:
        # Called by data_received with every read: the connection is in use; the timer, if any, finds it so.
        self._idle_since = None

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        idle_since = self._idle_since
        if idle_since is None:
            return  # a request is under way: its answer arms the timer again
        left = idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_due)
        else:
            self.timeout_keep_alive_handler()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's message names nothing the client sent; ours says the same in the API's shape.
        self.transport.write(_RESPONSE)
        self.transport.close()
        access_log.refused_unparsed(_ERROR)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # Every cycle, pipelined ones included, starts here; the class only adds methods.
        ACTIVITY.n += 1  # a request: work a client waits for (core.activity)
        cycle.__class__ = OneWriteCycle
        cycle._told_gone = True  # type: ignore[attr-defined]  # connection_lost below tells it
        super()._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        timer, self.timeout_keep_alive_task = self.timeout_keep_alive_task, None
        if timer is not None:
            timer.cancel()  # nothing left to time out
        super().connection_lost(exc)
        if type(cycle) is OneWriteCycle and cycle.disconnected and cycle._on_gone is not None:
            on_gone, cycle._on_gone = cycle._on_gone, None
            on_gone()


# The bytes uvicorn's HEADER_RE and HEADER_VALUE_RE refuse in a header's name and value, for bytes.translate: the same
# test as a search with either pattern, without the regular expression engine (a tenth of its cost on a head).
BAD_NAME_BYTES = bytes(range(0x20)) + b'\x7f "(),:;<=>@[\\]{}'
BAD_VALUE_BYTES = bytes(range(0x09)) + bytes(range(0x0A, 0x20)) + b"\x7f"


def _closes(value: bytes) -> bool:
    return b"close" in [token.lower().strip() for token in value.split(b",")]


# The server's default headers (the date, refreshed every second) as header lines, and whether they close the
# connection; None where send would refuse them. One list at a time: uvicorn replaces the list when the date changes.
_DEFAULTS: list[Any] = [None, None]


def _defaults(pairs: list[tuple[bytes, bytes]]) -> tuple[bytes, bool] | None:
    if _DEFAULTS[0] is pairs:
        cached: tuple[bytes, bool] | None = _DEFAULTS[1]
        return cached
    names = [name.lower() for name, _ in pairs]
    result: tuple[bytes, bool] | None = None
    if not any(len(n.translate(None, BAD_NAME_BYTES)) != len(n) for n in names) and not any(
        len(v.translate(None, BAD_VALUE_BYTES)) != len(v) for _, v in pairs
    ):
        block = b"".join([name + b": " + value + b"\r\n" for name, (_, value) in zip(names, pairs, strict=True)])
        result = block, any(name == b"connection" and _closes(value) for name, (_, value) in zip(names, pairs, strict=True))
    _DEFAULTS[0], _DEFAULTS[1] = pairs, result  # the list is kept alive here, so "is" cannot match a new one at its address
    return result


class _HeldHead:
    """The cycle's transport between a response's head and its body: the head is written with the body."""

    __slots__ = ("_cycle", "_head", "_transport")

    def __init__(self, cycle: RequestResponseCycle, transport: Any) -> None:
        self._cycle = cycle
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._head is None:
            self._head = data  # the status line and headers, in uvicorn's words
        else:
            self.release(data)

    def release(self, data: bytes = b"") -> None:
        """Give the cycle its transport back, writing the held head (and ``data``) in one call."""
        self._cycle.transport = self._transport
        head, self._head = self._head, None
        if head is not None:
            data = head + data if data else head
        if data and not self._cycle.disconnected:
            self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's cycle, with the head of an answer with a length held for its body, and direct writes.

    ``write_whole``, ``start_chunks``, ``write_chunk`` and ``end_chunks`` do
    what ``send`` does with the corresponding ASGI messages, without the
    messages. Each returns False, having done nothing, where ``send`` must do
    it instead: writes paused for a slow client (``send`` waits for the
    drain), a client gone, a ``HEAD`` request, a header ``send`` refuses,
    uvicorn's own access log on, or a message out of order.
    """

    # Set on the cycles of JsonErrorHttpProtocol, whose connection_lost calls _on_gone.
    _told_gone = False
    _on_gone: Callable[[], None] | None = None
    _held: bytes | None = None  # a stream's head, waiting for its first chunk (start_chunks with a loop)

    def watch_gone(self, callback: Callable[[], None] | None) -> bool:
        """Have ``callback`` called once if the client goes away before the answer is complete (None: no longer).

        False where this cycle's protocol cannot tell it, or the client has already gone: a task awaiting
        ``receive`` must watch instead. Watching reads the connection, as ``receive`` would.
        """
        if callback is None:
            self._on_gone = None
            return True
        if not self._told_gone or self.disconnected:
            return False
        self._on_gone = callback
        self.flow.resume_reading()  # a client's close is seen only while the connection is read
        return True

    def _head(self, status: int, headers: list[tuple[bytes, bytes]], chunked: bool) -> tuple[list[bytes], bool] | None:
        """The status line and header lines as ``send`` writes them, and whether the connection is kept; None: leave it to ``send``."""
        if self.response_started or self.flow.write_paused or self.disconnected or self.access_log or self.scope["method"] == "HEAD":
            return None
        defaults = _defaults(self.default_headers)
        names = [name for name, _ in headers]
        joined_names = b"".join(names)
        if not joined_names.islower():  # send lowers names; the gateway's own come lower already
            names = [name.lower() for name in names]
            joined_names = joined_names.lower()
            headers = [(name, value) for name, (_, value) in zip(names, headers, strict=True)]
        values = [value for _, value in headers]
        # send's checks, header by header, on the concatenations: a byte a name or a value must not hold is in them if in any
        joined_values = b"".join(values)
        if (
            defaults is None
            or len(joined_names.translate(None, BAD_NAME_BYTES)) != len(joined_names)
            or len(joined_values.translate(None, BAD_VALUE_BYTES)) != len(joined_values)
        ):
            return None  # send raises on it, as it should
        if chunked and (b"content-length" in names or b"transfer-encoding" in names):
            return None  # framing the answer chose itself: send's to honour
        keep, close_line = self.keep_alive, not self.keep_alive
        block, defaults_close = defaults
        if defaults_close:
            keep, close_line = False, False
        if b"connection" in names:
            for name, value in zip(names, values, strict=True):
                if name == b"connection" and _closes(value):
                    keep, close_line = False, False
        content = [STATUS_LINE[status], block]
        if headers:
            content += (b"\r\n".join(map(b": ".join, headers)), b"\r\n")  # "name: value" lines, joined in C
        if close_line:
            content.append(b"connection: close\r\n")
        if chunked:
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        return content, keep

    def write_whole(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """Answer ``status``, ``headers`` (``content-length`` among them, matching ``body``) and ``body`` in one write."""
        head = self._head(status, headers, chunked=False)
        if head is None:
            return False
        content, self.keep_alive = head
        content.append(body)
        self.response_started = self.response_complete = True
        self.waiting_for_100_continue = False
        self.chunked_encoding, self.expected_content_length = False, 0
        self.transport.write(b"".join(content))
        self._completed()
        return True

    def start_chunks(self, status: int, headers: list[tuple[bytes, bytes]], loop: AbstractEventLoop | None = None) -> bool:
        """Send the head of a streamed answer (chunked; ``headers`` without a length); its chunks follow.

        With ``loop``, the head waits for the stream's first chunk (or its end) and goes out in the same write; if
        none comes before ``loop``'s next round, it goes out then on its own, so a client never waits longer for
        the status than it did for the head alone.
        """
        if status in (204, 304):
            return False
        head = self._head(status, headers, chunked=True)
        if head is None:
            return False
        content, self.keep_alive = head
        self.response_started = True
        self.waiting_for_100_continue = False
        self.chunked_encoding, self.expected_content_length = True, 0
        if loop is None:
            self.transport.write(b"".join(content))
        else:
            self._held = b"".join(content)
            loop.call_soon(self._release_head)
        return True

    def _release_head(self) -> None:
        """Write a held head, if it is still held, on its own."""
        head, self._held = self._held, None
        if head is not None and not self.disconnected and not self.transport.is_closing():
            self.transport.write(head)

    def _open_stream(self) -> bool:
        """A stream started and not ended, to a client that is there and reading."""
        return not (self.flow.write_paused or self.disconnected or not self.chunked_encoding or self.response_complete)

    def write_chunk(self, body: bytes) -> bool:
        """One chunk of a streamed answer started by ``start_chunks``."""
        if not self._open_stream():
            return False
        if body:
            held, self._held = self._held, None
            self.transport.write(b"%b%x\r\n%b\r\n" % (held, len(body), body) if held else b"%x\r\n%b\r\n" % (len(body), body))
        return True

    def end_chunks(self, last: bytes = b"") -> bool:
        """The end of a streamed answer started by ``start_chunks``; ``last``, its last chunk, goes in the same write."""
        if not self._open_stream():
            return False
        self.response_complete = True
        held, self._held = self._held, None
        end = b"%x\r\n%b\r\n0\r\n\r\n" % (len(last), last) if last else b"0\r\n\r\n"
        self.transport.write(held + end if held else end)
        self._completed()
        return True

    def _completed(self) -> None:
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()

    async def send(self, message: Any) -> None:
        if self._held is not None:
            self._release_head()  # a held head goes before anything send writes
        if message["type"] == "http.response.start" and not self.response_started and self.scope["method"] != "HEAD":
            transport = self.transport
            held = _HeldHead(self, transport)
            self.transport = held  # type: ignore[assignment]
            try:
                await super().send(message)
            except BaseException:
                self.transport = transport
                raise
            current: Any = self.transport
            if self.chunked_encoding and current is held:
                held.release()  # a stream: its head goes out now
            return
        await super().send(message)
        after: Any = self.transport
        if type(after) is _HeldHead:  # a body that wrote nothing, or a client that went away
            after.release()
