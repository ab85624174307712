"""Completion tokens of a stream, metered against what the budget reserved.

The upstream was asked for at most the allowance; the meter catches one that
ignores it. A chunk that would take the stream past the allowance is not
relayed, so what the client receives (and is billed for) stays within the
reservation.

Tokenizing waits until it could matter. A token is at least one byte of text,
and a chunk's text is never longer than the chunk's raw bytes, so while the
counted tokens plus the bytes of the chunks not yet counted fit, nothing can
be over. That costs one subtraction per chunk. Only once the raw bytes no
longer fit are chunks bounded more tightly (``text_bytes_bound``: the text's
part of the event, still without decoding), oldest first and only as many as
it takes to make room, and only once even that bound no longer fits is the
pending text tokenized: chunk by chunk, as the
ledger counts a stream whose upstream reports no usage, so that what is billed
is what was metered. A run of events relayed as the upstream framed them
(``StreamChunk.events``) is taken whole only while it fits by its raw bytes or
its text-bytes bound (``takes``); otherwise the relay splits it and admits its
events one by one, so a stream is cut at the same event either way, and a run
is counted event by event (``chunk_texts``).
"""

from __future__ import annotations

from budgets.tokens import Counter
from serving.base import StreamChunk
from serving.sse import chunk_text, chunk_texts, text_bytes_bound


class StreamMeter:
    __slots__ = ("allowance", "_count", "_chunks", "counted", "_counted_upto", "_tight", "_bounded_upto", "_room")

    def __init__(self, allowance: int, count: Counter | None, chunks: list[StreamChunk]) -> None:
        """``chunks`` is the stream's list of relayed chunks, which the caller appends to."""
        self.allowance = allowance
        self._count = count
        self._chunks = chunks
        # Exact completion tokens of chunks[:_counted_upto].
        self.counted = 0
        self._counted_upto = 0
        # Text-bytes bound of chunks[_counted_upto:_bounded_upto]; the rest are bounded by their raw bytes.
        self._tight = 0
        self._bounded_upto = 0
        # The allowance less everything above and the raw bytes of the rest.
        self._room = allowance

    def admits(self, chunk: StreamChunk) -> bool:
        """Whether ``chunk`` (about to be appended to the chunks) stays within the allowance."""
        size = len(chunk.data)
        if size <= self._room:
            self._room -= size
            return True
        return self._admits_closer(chunk)

    def takes(self, run: StreamChunk) -> bool:
        """Whether a run of events (``StreamChunk.events``, about to be appended whole) fits by its bounds alone; taken if so.

        False leaves the run to be split and its events admitted one by one
        (``admits``), which count tokens where they must.
        """
        size = len(run.data)
        if size <= self._room:
            self._room -= size
            return True
        return self._bounded(run) or self._count is None

    def _bounded(self, chunk: StreamChunk) -> bool:
        """Whether ``chunk`` fits once the chunks before it, and then it, are bounded by their text bytes; taken if so."""
        chunks, end = self._chunks, len(self._chunks)
        size = len(chunk.data)
        # Tighter bounds for the chunks only bounded by their raw bytes, until the new one fits.
        while self._bounded_upto < end:
            older = chunks[self._bounded_upto]
            bound = text_bytes_bound(older)
            self._tight += bound
            self._room += len(older.data) - bound
            self._bounded_upto += 1
            if size <= self._room:
                self._room -= size
                return True
        bound = text_bytes_bound(chunk)
        if bound <= self._room:
            self._tight += bound
            self._room -= bound
            self._bounded_upto = end + 1
            return True
        return False

    def _admits_closer(self, chunk: StreamChunk) -> bool:
        if self._bounded(chunk):
            return True
        count = self._count
        if count is None:
            return True
        chunks, end = self._chunks, len(self._chunks)
        self.counted += sum(map(count, filter(None, chunk_texts(chunks[self._counted_upto :]))))
        tokens = count(chunk_text(chunk))
        self._tight, self._counted_upto, self._bounded_upto = 0, end, end
        self._room = self.allowance - self.counted
        if self.counted + tokens > self.allowance and chunk.finish_reason is None:
            return False
        self.counted += tokens
        self._room -= tokens
        self._counted_upto = self._bounded_upto = end + 1
        return True

    def exact(self) -> int:
        """Completion tokens of every chunk so far, counted (for a stream cut off here)."""
        count, chunks = self._count, self._chunks
        if count is not None and self._counted_upto < len(chunks):
            self.counted += sum(map(count, filter(None, chunk_texts(chunks[self._counted_upto :]))))
            self._counted_upto = self._bounded_upto = len(chunks)
            self._tight = 0
            self._room = self.allowance - self.counted
        return self.counted
