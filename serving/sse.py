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


# A JSON key cannot occur unescaped inside a JSON string, so these byte patterns
# only match real keys: chunks without them carry no usage and no error.
USAGE_KEY = b'"usage":{'
ERROR_KEY = b'"error"'


def peek_chunk(payload: bytes) -> StreamChunk:
    """Turn one ``data:`` payload into a StreamChunk without re-encoding it.

    Only chunks that may carry usage or an error are decoded here; the text of
    the others is read later, and only if something needs it (``chunk_text``).
    """
    if USAGE_KEY not in payload and ERROR_KEY not in payload:
        return StreamChunk(data=payload, text=None)
    return _decoded(payload)


def text_bytes_bound(chunk: StreamChunk) -> int:
    """An upper bound on the UTF-8 bytes of ``chunk_text(chunk)``, without decoding it.

    The text is in ``"content"`` or ``"text"`` members; a JSON string is never
    shorter raw than decoded, so everything from the first such key to the end
    of the event bounds it. A ``\\u`` escape anywhere (a key could be spelled
    with one) falls back to the whole event.
    """
    text = chunk.text
    if text is not None:
        return len(text) if text.isascii() else len(text.encode("utf-8"))
    data = chunk.data
    # (92 is a backslash: a one-byte search first, several times faster than the two-byte one)
    if 92 in data and b"\\u" in data:
        return len(data)
    content, plain = data.find(b'"content"'), data.find(b'"text"')
    first = plain if plain >= 0 and (content < 0 or plain < content) else content
    return len(data) - first if first >= 0 else 0


def chunk_text(chunk: StreamChunk) -> str:
    """The generated text of a chunk, decoding it the first time it is asked for."""
    if chunk.text is None:
        decoded = _decoded(chunk.data)
        chunk.text, chunk.finish_reason = decoded.text, decoded.finish_reason
    return chunk.text or ""


def _decoded(payload: bytes) -> StreamChunk:
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


async def iter_sse_data(reads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Each event's data payload, one at a time (see ``iter_sse_batches``)."""
    async for batch in iter_sse_batches(reads):
        for data in batch:
            yield data


async def iter_sse_batches(reads: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """Each network read's complete events' data payloads, as a list; stops at ``[DONE]``.

    Events are split on blank lines as they arrive, without going line by line
    through the reader. Raises ``EOFError`` when the stream ends without
    ``[DONE]`` (the upstream went away). Multi-line data fields are joined with
    newlines as the SSE spec says; comments and other fields are ignored.
    """
    buffer = b""
    async for read in reads:
        buffer = buffer + read if buffer else read
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        start = 0
        batch: list[bytes] = []
        while (end := buffer.find(b"\n\n", start)) >= 0:
            data = _event_data(buffer[start:end])
            start = end + 2
            if data == b"[DONE]":
                if batch:
                    yield batch
                return
            if data is not None:
                batch.append(data)
        buffer = buffer[start:]
        if batch:
            yield batch
    data = _event_data(buffer.strip(b"\n")) if buffer.strip() else None
    if data == b"[DONE]":
        return
    if data is not None:
        yield [data]
    raise EOFError("stream ended before [DONE]")


def _event_data(block: bytes) -> bytes | None:
    if block.startswith(b"data: ") and b"\n" not in block:
        return block[6:]  # the usual case: one data line
    parts = [
        line[6:] if line[5:6] == b" " else line[5:] for line in block.split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(parts) if parts else None
