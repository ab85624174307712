"""Gemini ``streamGenerateContent?alt=sse`` events --> OpenAI chat.completion.chunk payloads.

Each Gemini event is a partial reply: new text and whole function calls per
candidate, the finish reason on a candidate's last event, and usage that grows
until the last event. The stream has no end marker of its own: it is complete
when every candidate it started has finished (``done``), and the engine asks for
the usage-only chunk (``final_chunks``) when the connection ends.
"""

from __future__ import annotations

import time

import msgspec

from core.errors import UpstreamError
from serving.base import JsonObject, StreamChunk
from serving.gemini_reply import answer_parts, completion_id, finish_reason, openai_usage, to_usage, tool_call

_encode = msgspec.json.Encoder().encode


class StreamTranslator:
    """Turns one reply's Gemini stream events into OpenAI chunk payloads."""

    def __init__(self, *, model: str, created: int | None = None, max_calls: int | None = None) -> None:
        self._id = ""
        # Calls relayed per choice at most (``parallel_tool_calls: false``); later ones are dropped.
        self._max_calls = max_calls
        self._model = model
        self._created = created if created is not None else int(time.time())
        # candidate index --> tool calls relayed so far (OpenAI numbers them per choice)
        self._calls: dict[int, int] = {}
        self._finished: set[int] = set()
        self._metadata: JsonObject | None = None

    @property
    def done(self) -> bool:
        """Every candidate that started has its finish reason: the reply is whole."""
        return bool(self._finished) and self._calls.keys() <= self._finished

    def feed(self, event: JsonObject) -> list[StreamChunk]:
        """The chunks one event gives; a malformed event is the upstream's failure, not a crash."""
        try:
            return self._feed(event)
        except (AttributeError, TypeError, KeyError, ValueError, msgspec.EncodeError):
            raise UpstreamError("Gemini sent a stream event of an unexpected shape") from None

    def final_chunks(self) -> list[StreamChunk]:
        """The usage-only chunk, once the stream has ended whole (none when Gemini sent no usage)."""
        usage = to_usage(self._metadata)
        if usage is None or self._metadata is None:
            return []
        payload = {**self._envelope(), "choices": [], "usage": openai_usage(usage, self._metadata)}
        return [StreamChunk(data=_encode(payload), usage=usage, usage_only=True)]

    def _feed(self, event: JsonObject) -> list[StreamChunk]:
        error = event.get("error")
        if isinstance(error, dict):
            raise UpstreamError(f"Gemini failed mid-stream: {error.get('status') or error.get('code') or 'error'}")
        if not self._id:
            self._id = completion_id(event)
            self._model = event.get("modelVersion") or self._model
        if isinstance(event.get("usageMetadata"), dict):
            # Later events carry the running totals, the last one the final count.
            self._metadata = event["usageMetadata"]
        candidates = event.get("candidates") or ()
        if not candidates and (event.get("promptFeedback") or {}).get("blockReason"):
            # A blocked prompt: one empty answer, filtered.
            return [*self._start(0), self._finish(0, "content_filter")]
        chunks: list[StreamChunk] = []
        for position, candidate in enumerate(candidates):
            index = candidate.get("index")
            chunks.extend(self._candidate(index if isinstance(index, int) else position, candidate))
        return chunks

    def _candidate(self, index: int, candidate: JsonObject) -> list[StreamChunk]:
        chunks = self._start(index)
        texts, calls = answer_parts(candidate)
        for text in texts:
            if text:
                chunks.append(self._chunk(index, {"content": text}, text=text))
        for part in calls:
            if self._max_calls is not None and self._calls[index] >= self._max_calls:
                break
            call = {"index": self._calls[index], **tool_call(part)}
            self._calls[index] += 1
            chunks.append(self._chunk(index, {"tool_calls": [call]}, text=call["function"]["arguments"]))
        reason = candidate.get("finishReason")
        if reason:
            chunks.append(self._finish(index, finish_reason(reason, self._calls[index] > 0)))
        return chunks

    def _start(self, index: int) -> list[StreamChunk]:
        if index in self._calls:
            return []
        self._calls[index] = 0
        return [self._chunk(index, {"role": "assistant", "content": ""})]

    def _finish(self, index: int, reason: str) -> StreamChunk:
        self._finished.add(index)
        return self._chunk(index, {}, finish_reason=reason)

    def _envelope(self) -> JsonObject:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model}

    def _chunk(self, index: int, delta: JsonObject, *, text: str = "", finish_reason: str | None = None) -> StreamChunk:
        choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return StreamChunk(data=_encode({**self._envelope(), "choices": [choice]}), text=text, finish_reason=finish_reason)
