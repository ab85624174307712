"""The little of HTTP the plugin's routes need, on plain ASGI: headers, a bounded body, JSON answers, trace ids."""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from core.errors import GatewayError, PayloadTooLarge, error_body

Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
_TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


def json_answer(status: int, value: object) -> Answer:
    return Answer(status, _encoder.encode(value))


def error_answer(exc: GatewayError) -> Answer:
    return Answer(exc.status, error_body(exc), tuple((k.encode(), v.encode()) for k, v in exc.headers().items()))


def headers_of(scope: Mapping[str, Any]) -> dict[str, bytes]:
    """Header names lower-cased; a repeated header's values joined with ", " (as HTTP folds them)."""
    found: dict[str, bytes] = {}
    for raw_name, value in scope.get("headers", ()):
        name = bytes(raw_name).decode("latin-1").lower()
        found[name] = found[name] + b", " + bytes(value) if name in found else bytes(value)
    return found


async def read_body(receive: Receive, headers: Mapping[str, bytes], limit: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    too_large = PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    declared = headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def send_answer(send: Send, answer: Answer) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer.body)).encode()), *answer.headers]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


def trace_id(headers: Mapping[str, bytes]) -> str:
    """The trace id of a W3C ``traceparent`` header when there is a valid one, else a new one."""
    found = _TRACEPARENT.match(headers.get("traceparent", b"").strip())
    if found is not None and found.group(1) != b"0" * 32:
        return found.group(1).decode("ascii")
    return secrets.token_hex(16)
