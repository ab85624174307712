"""ASGI responses with headers already encoded, for the inference routes.

Litestar's ``ASGIResponse`` takes ``encoded_headers`` only to decode each one,
add it to a case-insensitive header map (a linear scan per header) and encode
it again, with a deprecation warning per response. These keep Litestar's
sending and skip the header map: the handler's list of byte pairs is what
uvicorn gets. Served by the gateway's own protocol (``router.http_protocol``),
its answers are written straight to the connection's cycle, past the ASGI
messages; behind anything else (a middleware's wrapped ``send``, a test
client) they are sent as Litestar sends them.

A stream's head waits for its first chunk, to go out in the same write, but
no longer than the event loop's round: the pipeline's relay yields the
upstream's first chunk, which it has in hand when the answer starts, at once.

A stream is sent from the handler's own task; when the client goes away, the
sending task is cancelled (the relay then ends as a client disconnect:
settled, the upstream closed). On the gateway's own protocol the connection
tells the cycle (``OneWriteCycle.watch_gone``); behind anything else one more
task waits on ``receive`` for the disconnect. Litestar's streaming response
does the same through an anyio task group, a cancel scope and two tasks per
stream, which cost more than the rest of the answer's framing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import HTTPResponseBodyEvent, Receive, Scope, Send

from router.http_protocol import OneWriteCycle

_END: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"", "more_body": False}

Headers = list[tuple[bytes, bytes]]


class JsonAnswer(ASGIResponse):
    """A whole body; ``headers`` must not carry ``content-length`` (it is added here)."""

    __slots__ = ("_raw",)

    def __init__(self, body: bytes, headers: Headers, status_code: int = 200) -> None:
        # Every slot the base class reads when it sends.
        self.body = body
        self.status_code = status_code
        self.content_length = len(body)
        self.background = None
        self.is_head_response = False
        self.encoding = "utf-8"
        self._encoded_cookies = ()
        headers.append((b"content-length", b"%d" % len(body)))
        self._raw = headers

    def encode_headers(self) -> Headers:
        return self._raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cycle = getattr(send, "__self__", None)
        if type(cycle) is OneWriteCycle and cycle.write_whole(self.status_code, self._raw, self.body):
            return
        await super().__call__(scope, receive, send)


class LastChunk(bytes):
    """A stream's last chunk: nothing follows it but the stream's end, which goes out in the same write.

    A stream that ends with one costs one system call less than one that
    ends with plain bytes (its last chunk, then the end); the iterator still
    runs to its end after it, and must yield nothing more.
    """

    __slots__ = ()


def _current_task() -> asyncio.Task[object]:
    task = asyncio.current_task()
    assert task is not None  # an answer is always sent from a task
    return task


class StreamAnswer(ASGIStreamingResponse):
    """Chunks as they come; the client's disconnect cancels ``iterator``."""

    __slots__ = ("_chunks", "_raw")

    def __init__(self, iterator: AsyncIterator[bytes], headers: Headers, status_code: int = 200) -> None:
        self.iterator = self._chunks = iterator
        self.body = b""
        self.status_code = status_code
        self.content_length = 0
        self.background = None
        self.is_head_response = False
        self.encoding = "utf-8"
        self._encoded_cookies = ()
        self._raw = headers

    def encode_headers(self) -> Headers:
        return self._raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cycle = getattr(send, "__self__", None)
        if type(cycle) is OneWriteCycle:
            sender = _current_task()
            if cycle.start_chunks(self.status_code, self._raw, sender.get_loop()):
                await self._send_chunks(send, receive, cycle, sender)
                return
        await super().__call__(scope, receive, send)

    async def send_body(self, send: Send, receive: Receive) -> None:
        await self._send_chunks(send, receive, None, _current_task())

    async def _send_chunks(self, send: Send, receive: Receive, cycle: OneWriteCycle | None, sender: asyncio.Task[object]) -> None:
        """Send each chunk as it comes (straight to ``cycle`` where it takes it); return quietly once the client has gone
        (the relay cancelled)."""
        gone = False

        def left() -> None:
            nonlocal gone
            gone = True
            sender.cancel()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            left()

        watched = cycle is not None and cycle.watch_gone(left)
        watcher = None if watched else asyncio.get_running_loop().create_task(watch())
        try:
            ended = False
            async for chunk in self._chunks:
                if cycle is not None and type(chunk) is LastChunk and cycle.end_chunks(chunk):
                    ended = True  # the iterator still runs to its end
                elif cycle is None or not cycle.write_chunk(chunk):
                    event: HTTPResponseBodyEvent = {"type": "http.response.body", "body": chunk, "more_body": True}
                    await send(event)
            if not ended and (cycle is None or not cycle.end_chunks()):
                await send(_END)
        except asyncio.CancelledError:
            if not gone:
                raise
            sender.uncancel()  # the cancel was left()'s: the client left, nothing failed here
        finally:
            if watcher is None:
                assert cycle is not None
                cycle.watch_gone(None)
            elif not watcher.done():
                watcher.cancel()
