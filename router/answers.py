"""ASGI responses with headers already encoded, for the inference routes.

Litestar's ``ASGIResponse`` takes ``encoded_headers`` only to decode each one,
add it to a case-insensitive header map (a linear scan per header) and encode
it again, with a deprecation warning per response. These keep Litestar's
sending (and, for streams, its disconnect watch, which cancels the relay) and
skip the header map: the handler's list of byte pairs is what uvicorn gets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse

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


class StreamAnswer(ASGIStreamingResponse):
    """Chunks as they come; the client's disconnect cancels ``iterator`` (Litestar's task group)."""

    __slots__ = ("_raw",)

    def __init__(self, iterator: AsyncIterator[bytes], headers: Headers, status_code: int = 200) -> None:
        self.iterator = iterator
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
