"""Anthropic Messages stream events --> OpenAI chat.completion.chunk payloads.

Stateful because OpenAI numbers tool calls by their own index, and Anthropic
reports the stop reason and final usage only near the end of the stream.
"""

from __future__ import annotations

import time

import msgspec

from core.errors import UpstreamError
from serving.anthropic_translate import STOP_REASONS, to_usage
from serving.base import JsonObject, StreamChunk, usage_json

_encode = msgspec.json.Encoder().encode


class StreamTranslator:
    """Turns one message's Anthropic stream events into OpenAI chunk payloads.

    Feed it each decoded event in order; ``done`` turns true at ``message_stop``,
    after which the finish chunk and a usage-only chunk have been returned.
    """

    def __init__(self, *, created: int | None = None) -> None:
        self.done = False
        self._id = ""
        self._model = ""
        self._created = created if created is not None else int(time.time())
        self._usage: JsonObject = {}
        self._finish = "stop"
        # Anthropic content-block index --> OpenAI tool_calls index
        self._tools: dict[int, int] = {}

    def feed(self, event: JsonObject) -> list[StreamChunk]:
        """The chunks one event gives; a malformed event is the upstream's failure, not a crash."""
        try:
            return self._feed(event)
        except (AttributeError, TypeError, KeyError, ValueError, msgspec.EncodeError):
            raise UpstreamError("Anthropic sent a stream event of an unexpected shape") from None

    def _feed(self, event: JsonObject) -> list[StreamChunk]:
        kind = event.get("type")
        if kind == "message_start":
            return self._on_message_start(event.get("message") or {})
        if kind == "content_block_start":
            return self._on_block_start(event.get("index", 0), event.get("content_block") or {})
        if kind == "content_block_delta":
            return self._on_block_delta(event.get("index", 0), event.get("delta") or {})
        if kind == "message_delta":
            self._on_message_delta(event)
            return []
        if kind == "message_stop":
            self.done = True
            return self._final_chunks()
        if kind == "error":
            error = event.get("error") or {}
            raise UpstreamError(
                f"Anthropic failed mid-stream: {error.get('type') or 'error'}: {error.get('message') or ''}"
            )
        # ping, content_block_stop and event types newer than this code carry nothing to relay.
        return []

    def _on_message_start(self, message: JsonObject) -> list[StreamChunk]:
        self._id = message.get("id") or ""
        self._model = message.get("model") or ""
        self._usage.update(_present(message.get("usage")))
        return [self._chunk({"role": "assistant", "content": ""})]

    def _on_block_start(self, index: int, block: JsonObject) -> list[StreamChunk]:
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]}, text=block["text"])]
        if block.get("type") != "tool_use":
            return []
        position = self._tools[index] = len(self._tools)
        call = {
            "index": position,
            "id": block.get("id"),
            "type": "function",
            "function": {"name": block.get("name"), "arguments": ""},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _on_block_delta(self, index: int, delta: JsonObject) -> list[StreamChunk]:
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]}, text=delta["text"])]
        fragment = delta.get("partial_json")
        if delta.get("type") != "input_json_delta" or not fragment or index not in self._tools:
            return []
        call = {"index": self._tools[index], "function": {"arguments": fragment}}
        return [self._chunk({"tool_calls": [call]}, text=fragment)]

    def _on_message_delta(self, event: JsonObject) -> None:
        reason = (event.get("delta") or {}).get("stop_reason")
        if reason:
            self._finish = STOP_REASONS.get(reason, "stop")
        # message_delta usage is cumulative, so later values replace earlier ones.
        self._usage.update(_present(event.get("usage")))

    def _final_chunks(self) -> list[StreamChunk]:
        usage = to_usage(self._usage)
        finish = self._chunk({}, finish_reason=self._finish)
        payload = {**self._envelope(), "choices": [], "usage": usage_json(usage)}
        return [finish, StreamChunk(data=_encode(payload), usage=usage, usage_only=True)]

    def _envelope(self) -> JsonObject:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model}

    def _chunk(self, delta: JsonObject, *, text: str = "", finish_reason: str | None = None) -> StreamChunk:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        payload = {**self._envelope(), "choices": [choice]}
        return StreamChunk(data=_encode(payload), text=text, finish_reason=finish_reason)


def _present(raw: object) -> JsonObject:
    return {k: v for k, v in raw.items() if v is not None} if isinstance(raw, dict) else {}
