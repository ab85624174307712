"""Reading a request body within the size limit, so that every client hears the answer.

An oversized body is refused with 413, but only after the rest of it has been
read and thrown away (up to ``DRAIN_BYTES``): a server that answers and closes
while the client is still sending makes a blocking client (urllib, curl without
Expect) see a connection reset instead of the status. Past the drain bound the
connection is closed anyway; nothing is kept while draining.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litestar import Request
from litestar.types import Receive

from core.errors import InvalidRequest, PayloadTooLarge

# Read and discarded beyond the limit before answering 413: a few seconds of
# upload at most, and no memory held.
DRAIN_BYTES = 64 * 1024 * 1024


class ClientGone(InvalidRequest):
    """The client went away before sending its whole body: nobody is left to read an answer."""

    status = 499


async def read_body(request: Request[Any, Any, Any], limit: int) -> bytes:
    """The whole body, or ``PayloadTooLarge`` once it is known to exceed ``limit``."""
    return await read_asgi_body(request.headers, request.receive, limit)


async def read_asgi_body(headers: Mapping[str, str], receive: Receive, limit: int) -> bytes:
    """``read_body`` from the ASGI ``receive`` and the request's headers (lower-case names)."""
    announced = headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > limit:
        # A client that waits for "100 Continue" has sent nothing yet: asking for
        # the body would invite it to upload what is refused anyway.
        if headers.get("expect", "").lower() != "100-continue":
            await _drain(receive, 0)
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        if event["type"] != "http.request":
            raise ClientGone("The client closed the connection before sending the whole body.")
        chunk = event.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                if event.get("more_body", False):
                    await _drain(receive, size)
                raise _too_large(limit)
            chunks.append(chunk)
        if not event.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _drain(receive: Receive, seen: int) -> None:
    while seen <= DRAIN_BYTES:
        event = await receive()
        if event["type"] != "http.request":
            return
        seen += len(event.get("body", b""))
        if not event.get("more_body", False):
            return


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
