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

A whole answer of the inference routes (``router.answers.JsonAnswer``) skips
the ASGI messages altogether: ``OneWriteCycle.write_whole`` does what
uvicorn's ``send`` does for a start and a last body (the same header checks,
``connection: close`` when the connection is not kept, the next pipelined
request started) in one call and one write.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

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
    def send_400_response(self, msg: str) -> None:
        # uvicorn's message names nothing the client sent; ours says the same in the API's shape.
        self.transport.write(_RESPONSE)
        self.transport.close()
        access_log.refused_unparsed(_ERROR)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # Every cycle, pipelined ones included, starts here; the class only adds a method.
        cycle.__class__ = OneWriteCycle
        super()._start_asgi_task(cycle, app)


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
    def write_whole(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """Answer ``status``, ``headers`` (``content-length`` among them, matching ``body``) and ``body`` in one write.

        What ``send`` does with a start and a last body message, without the
        messages. False, having done nothing, where ``send`` must do it: a
        response already started, writes paused for a slow client, a ``HEAD``
        request, or uvicorn's own access log on.
        """
        if self.response_started or self.flow.write_paused or self.access_log or self.scope["method"] == "HEAD":
            return False
        if self.disconnected:
            return True  # as send: nothing to write to
        content = [STATUS_LINE[status]]
        close = not self.keep_alive
        for pair in (self.default_headers, headers):
            for name, value in pair:
                if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
                    return False  # send raises on it, as it should
                name = name.lower()
                if name == b"connection" and b"close" in [token.lower().strip() for token in value.split(b",")]:
                    self.keep_alive, close = False, False
                content += (name, b": ", value, b"\r\n")
        if close:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        self.response_started = self.response_complete = True
        self.waiting_for_100_continue = False
        self.chunked_encoding, self.expected_content_length = False, 0
        self.transport.write(b"".join(content))
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()
        return True

    async def send(self, message: Any) -> None:
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
