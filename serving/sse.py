"""Reading OpenAI-style server-sent events and peeking at chunks cheaply."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from serving.base import StreamChunk, Usage


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    text: str | None = None
    finish_reason: str | None = None


class _ErrorPeek(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: str | int | None = None


class _ChunkPeek(msgspec.Struct):
    """Only what the gateway needs from a chunk; the rest is relayed untouched."""

    choices: list[_Choice] = []
    usage: Usage | None = None
    error: _ErrorPeek | None = None


_chunk_decoder = msgspec.json.Decoder(_ChunkPeek)


class UpstreamStreamError(Exception):
    """An upstream sent an error event in the middle of a stream."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def peek_chunk(payload: bytes) -> StreamChunk:
    """Turn one ``data:`` payload into a StreamChunk without re-encoding it."""
    try:
        peek = _chunk_decoder.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError):
        # Unknown shape: relay it, count nothing.
        return StreamChunk(data=payload)
    if peek.error is not None:
        raise UpstreamStreamError(peek.error.message or "upstream error event")
    text = ""
    finish = None
    for choice in peek.choices:
        if choice.delta is not None and choice.delta.content:
            text += choice.delta.content
        elif choice.text:
            text += choice.text
        if choice.finish_reason is not None:
            finish = choice.finish_reason
    return StreamChunk(
        data=payload,
        usage=peek.usage,
        usage_only=peek.usage is not None and not peek.choices,
        text=text,
        finish_reason=finish,
    )


async def iter_sse_data(lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Yield each event's data payload; stops at ``[DONE]``.

    Raises ``EOFError`` when the stream ends without ``[DONE]`` (the upstream went away).
    Multi-line data fields are joined with newlines as the SSE spec says.
    """
    parts: list[bytes] = []
    async for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line:
            if parts:
                data = b"\n".join(parts)
                parts = []
                if data == b"[DONE]":
                    return
                yield data
            continue
        if line.startswith(b"data:"):
            parts.append(line[6:] if line[5:6] == b" " else line[5:])
        # Comments (":"), "event:", "id:" and "retry:" lines carry nothing we relay.
    if parts:
        data = b"\n".join(parts)
        if data == b"[DONE]":
            return
        yield data
    raise EOFError("stream ended before [DONE]")
