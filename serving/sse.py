"""Reading OpenAI-style server-sent events and peeking at chunks cheaply."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator

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
    of the event bounds it; a run of events (``StreamChunk.events``) is
    bounded likewise, event by event (``_run_text_bound``). A ``\\u`` escape
    anywhere (a key could be spelled with one) falls back to the whole event
    or run.
    """
    text = chunk.text
    if text is not None:
        return len(text) if text.isascii() else len(text.encode("utf-8"))
    data = chunk.data
    # (92 is a backslash: a one-byte search first, several times faster than the two-byte one)
    if 92 in data and b"\\u" in data:
        return len(data)
    if chunk.events:
        return _run_text_bound(data)
    first = _first_text_key(data, 0, len(data))
    return len(data) - first if first >= 0 else 0


def _first_text_key(data: bytes, start: int, stop: int) -> int:
    """Where the first ``"content"`` or ``"text"`` in ``data[start:stop]`` begins; -1 if none does."""
    content, plain = data.find(b'"content"', start, stop), data.find(b'"text"', start, stop)
    return plain if plain >= 0 and (content < 0 or plain < content) else content


def _payload_start(run: bytes, stop: int) -> int:
    """Where the payload of the run's last event ending at ``stop`` begins."""
    boundary = run.rfind(b"\n\ndata: ", 0, stop)
    return boundary + 8 if boundary >= 0 else 6


def _run_text_bound(run: bytes) -> int:
    """``text_bytes_bound`` of a run: each event's bytes from its first ``"content"`` or ``"text"`` on, summed.

    An upstream's events mostly begin alike up to that point (the envelope, the
    choice, the key): the prefix up to it of the last event that has such a key
    (of the last two) is taken from every event that begins with it, with that
    event's blank line, in one count over the run; other events count whole.
    The first such key of an event that begins with the prefix ends where the
    prefix's does, or later.
    """
    stop = len(run) - 2
    start = _payload_start(run, stop)
    key = _first_text_key(run, start, stop)
    if key < 0 and start > 6:  # the last event has none (a finish chunk): the one before it
        stop = start - 8
        start = _payload_start(run, stop)
        key = _first_text_key(run, start, stop)
    if key < 0:
        return len(run)
    end = key + (9 if run.startswith(b'"content"', key) else 6)
    prefix = run[start - 6 : end]  # b"data: " and the payload up to its first key's end
    alike = run.count(b"\n\n" + prefix) + run.startswith(prefix)  # blank lines are only between events in a run
    return len(run) - alike * (len(prefix) + 2)


def chunk_text(chunk: StreamChunk) -> str:
    """The generated text of a chunk (a run's events' texts joined), decoding it the first time it is asked for."""
    if chunk.text is None:
        if chunk.events:
            parts = [(chunk_text(single), single.finish_reason) for single in split_events(chunk)]
            chunk.text = "".join(text for text, _ in parts)
            chunk.finish_reason = next((finish for _, finish in reversed(parts) if finish is not None), None)
        else:
            decoded = _decoded(chunk.data)
            chunk.text, chunk.finish_reason = decoded.text, decoded.finish_reason
    return chunk.text or ""


def chunk_texts(chunks: Iterable[StreamChunk]) -> Iterator[str]:
    """The generated text of each chunk, a run's events one by one (as a tokenizer counts them, piece by piece)."""
    for chunk in chunks:
        if chunk.events:
            for single in split_events(chunk):
                yield chunk_text(single)
        else:
            yield chunk_text(chunk)


def split_events(chunk: StreamChunk) -> list[StreamChunk]:
    """A run of plain events (``StreamChunk.events``) as one chunk per event, the last keeping the run's ``batch_end``."""
    singles = [StreamChunk(event[6:], None, False, None, None, False) for event in chunk.data[:-2].split(b"\n\n")]
    singles[-1].batch_end = chunk.batch_end
    return singles


def singles(chunks: list[StreamChunk]) -> list[StreamChunk]:
    """``chunks`` with each run of events split into one chunk per event (``chunks`` itself when it holds no run)."""
    if not any(chunk.events for chunk in chunks):
        return chunks
    out: list[StreamChunk] = []
    for chunk in chunks:
        if chunk.events:
            out += split_events(chunk)
        else:
            out.append(chunk)
    return out


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


_DONE_EVENT = b"data: [DONE]\n\n"
_DONE_SIZE = len(_DONE_EVENT)


async def iter_chunk_batches(reads: AsyncIterator[bytes], *, framed: bool = False) -> AsyncIterator[list[StreamChunk]]:
    """An OpenAI stream's chunks, a network read's complete events at a time, in lists never empty, the last ``batch_end``.

    Each event's payload is peeked at (``peek_chunk``): an error event raises
    ``UpstreamStreamError`` after the events before it were handed over; the
    stream stops at ``[DONE]``, and raises ``EOFError`` if it ends without
    it. The events are split as ``iter_sse_batches`` splits them.

    With ``framed``, the events at the start of a read's complete ones that
    need no look of their own come as one chunk of the bytes as they arrived
    (``StreamChunk.events``): each a single ``data: {`` line, with no usage
    and no error, checked with four scans of the whole run instead of a step
    per event. They are exactly what a relay would write for those
    events one by one. The first event that needs a look, and those after it,
    come one by one.
    """
    buffer = b""
    async for read in reads:
        buffer = buffer + read if buffer else read
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        end = buffer.rfind(b"\n\n") + 2
        if end < 2:
            continue
        if end == len(buffer):
            region, buffer = buffer, b""
        else:
            region, buffer = buffer[:end], buffer[end:]
        batch: list[StreamChunk] = []
        start = 0
        if framed:
            plain = end  # the events before this need no look of their own
            if region.endswith(_DONE_EVENT) and (end == _DONE_SIZE or region.endswith(b"\n\n", 0, end - _DONE_SIZE)):
                plain = end - _DONE_SIZE  # the usual end, seen without a scan
            for mark in (USAGE_KEY, ERROR_KEY):
                at = region.find(mark, 0, plain)
                if at >= 0:
                    plain = region.rfind(b"\n\n", 0, at) + 2  # 1: the first event has it
            if plain > 1:
                run = region if plain == end else region[:plain]
                # Single "data: {" lines only: each "\n\ndata: {" holds two newlines and the run's end two more; any other
                # newline (another field, a payload over several lines, a blank event) or payload ([DONE]) breaks the count.
                events = run.count(b"\n\ndata: {") + 1
                if run.startswith(b"data: {") and run.count(b"\n") == 2 * events:
                    batch.append(StreamChunk(run, None, False, None, None, False, events))
                    start = plain
        payloads, start, done = _payloads(region, start)
        for data in payloads:
            if USAGE_KEY in data or ERROR_KEY in data:
                try:
                    chunk = peek_chunk(data)
                except UpstreamStreamError:
                    if batch:  # what came before the error event is handed over first, as it would be alone
                        batch[-1].batch_end = True
                        yield batch
                    raise
                chunk.batch_end = False
            else:  # peek_chunk's answer for a chunk without usage or an error, built directly
                chunk = StreamChunk(data, None, False, None, None, False)
            batch.append(chunk)
        if batch:
            batch[-1].batch_end = True
            yield batch
        if done:
            return
        if start < end:  # a blank line's lone newline: kept, as the splitting above would keep it
            buffer = region[start:] + buffer
    last, done = _tail(buffer)
    if done:
        return
    if last is not None:
        yield [peek_chunk(last)]
    raise EOFError("stream ended before [DONE]")


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
        batch, start, done = _payloads(buffer, 0)
        buffer = buffer[start:]
        if batch:
            yield batch
        if done:
            return
    data, done = _tail(buffer)
    if done:
        return
    if data is not None:
        yield [data]
    raise EOFError("stream ended before [DONE]")


def _payloads(buffer: bytes, start: int) -> tuple[list[bytes], int, bool]:
    """The data payloads of ``buffer``'s complete events from ``start`` on, where the rest begins, and whether ``[DONE]`` ended them."""
    payloads: list[bytes] = []
    while (end := buffer.find(b"\n\n", start)) >= 0:
        data = _event_data(buffer[start:end])
        start = end + 2
        if data == b"[DONE]":
            return payloads, start, True
        if data is not None:
            payloads.append(data)
    return payloads, start, False


def _tail(buffer: bytes) -> tuple[bytes | None, bool]:
    """What is left when the reads end (an event without its blank line): its payload, if any, and whether it is ``[DONE]``."""
    data = _event_data(buffer.strip(b"\n")) if buffer.strip() else None
    return (None, True) if data == b"[DONE]" else (data, False)


def _event_data(block: bytes) -> bytes | None:
    if block.startswith(b"data: ") and b"\n" not in block:
        return block[6:]  # the usual case: one data line
    parts = [
        line[6:] if line[5:6] == b" " else line[5:] for line in block.split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(parts) if parts else None
