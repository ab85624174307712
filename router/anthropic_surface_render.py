"""The Anthropic surface's renderer: a chat completion, or a chat stream, as the Messages API answers.

A stream becomes the events the anthropic SDK accumulates, each framed
``event: NAME`` / ``data: JSON``: ``message_start`` (and a ``ping``); per
content block ``content_block_start``, its deltas (``text_delta`` or
``input_json_delta``) and ``content_block_stop``; then ``message_delta`` with
the stop reason and usage, and ``message_stop``. An error after the first byte
is an ``error`` event with Anthropic's error JSON.

Usage is known only from the chat stream's last chunk, so ``message_start``
says 0 tokens and ``message_delta`` carries the counts (input tokens included,
which the SDK takes from there).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from core.errors import GatewayError, UpstreamError
from router.anthropic_surface import JsonObject, error_json
from router.chat_read import UNREADABLE, ChatUsage, Choice, Function, Message, ToolCall, decode_completion
from router.context import RequestContext
from serving.base import Usage

_encode = msgspec.json.encode
_decode_input = msgspec.json.Decoder(dict[str, object]).decode


# --- Message pieces ------------------------------------------------------------------

# Chat's finish reasons --> Anthropic's stop reasons.
_STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use", "content_filter": "refusal"}


def stop_reason(finish: str | None, matched: object, stop_sequences: list[str]) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence): a stop string is known only where the upstream says which one matched (vLLM)."""
    if finish == "stop" and isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return _STOP_REASONS.get(finish or "", "end_turn"), None


def usage_object(usage: ChatUsage | Usage | None) -> JsonObject:
    """OpenAI usage --> Anthropic's, which counts cache reads apart from ``input_tokens``."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    if isinstance(usage, ChatUsage):
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details is not None else 0
    else:
        cached = usage.cached_tokens
    return {
        "input_tokens": max(usage.prompt_tokens - cached, 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": usage.completion_tokens,
    }


def tool_input(arguments: str, deployment: str) -> JsonObject:
    """A call's JSON-string arguments as the ``input`` object a tool_use block carries."""
    if not arguments.strip():
        return {}  # a function without parameters: some upstreams send nothing
    try:
        return _decode_input(arguments)
    except UNREADABLE:
        raise UpstreamError(f"deployment {deployment} returned tool call arguments that are not a JSON object") from None


@dataclass(slots=True)
class MessageHead:
    """What every Message of one request repeats: its id, the model asked for and the stop strings."""

    message_id: str
    model: str
    stop_sequences: list[str]

    def message(self, content: list[JsonObject], reason: str | None, sequence: str | None, usage: JsonObject) -> JsonObject:
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": usage,
        }


def unary_message(head: MessageHead, body: bytes, measured: Usage | None, deployment: str) -> JsonObject:
    """The whole Message for a non-streamed chat completion; ``measured`` stands in for usage the body lacks."""
    completion = decode_completion(body)
    choice = completion.choices[0] if completion.choices else Choice()
    message = choice.message or Message()
    content: list[JsonObject] = []
    # A refusal is what the model said: kept as its text.
    text = (message.content or "") + (message.refusal or "")
    if text:
        content.append({"type": "text", "text": text})
    for n, call in enumerate(message.tool_calls or ()):
        function = call.function or Function()
        block_id = call.id or f"toolu_{head.message_id.removeprefix('msg_')}_{n}"
        content.append(
            {"type": "tool_use", "id": block_id, "name": function.name or "", "input": tool_input(function.arguments or "", deployment)}
        )
    reason, sequence = stop_reason(choice.finish_reason, choice.stop_reason, head.stop_sequences)
    return head.message(content, reason, sequence, usage_object(completion.usage if completion.usage is not None else measured))


# --- the renderer -----------------------------------------------------------------------


class MessagesRenderer:
    """One request's renderer (``router.render.Renderer``); a stream's state lives here between chunks."""

    def __init__(self, head: MessageHead) -> None:
        self.head = head
        self._events: list[bytes] = []
        self._started = False
        self._blocks = 0  # content blocks opened so far: the next one's index
        self._open: int | None = None  # index of the block being streamed
        self._text_open = False  # whether that block is text
        self._calls: dict[int, int] = {}  # chat tool call index --> its block's index
        self._finish: str | None = None
        self._matched: object = None
        self._usage: ChatUsage | None = None

    def unary(self, ctx: RequestContext, body: bytes) -> bytes:
        try:
            return _encode(unary_message(self.head, body, ctx.usage, ctx.deployment))
        except UNREADABLE:
            raise UpstreamError(f"deployment {ctx.deployment} returned a completion the Messages API cannot express") from None

    def chunk(self, ctx: RequestContext, data: bytes) -> bytes:
        self._start()
        try:
            completion = decode_completion(data)
        except UNREADABLE:
            return self._flush()  # nothing in it a Message can show
        if completion.usage is not None:
            self._usage = completion.usage
        for choice in completion.choices:
            delta = choice.delta
            if choice.index != 0:
                continue
            if delta is not None:
                text = (delta.content or "") + (delta.refusal or "")
                if text:
                    self._text(text)
                for call in delta.tool_calls or ():
                    self._call(call)
            if choice.finish_reason is not None:
                self._finish, self._matched = choice.finish_reason, choice.stop_reason
        return self._flush()

    def end(self, ctx: RequestContext) -> bytes:
        self._start()
        self._close()
        reason, sequence = stop_reason(self._finish, self._matched, self.head.stop_sequences)
        usage = usage_object(self._usage if self._usage is not None else ctx.usage)
        self._emit("message_delta", delta={"stop_reason": reason, "stop_sequence": sequence}, usage=usage)
        self._emit("message_stop")
        return self._flush()

    def error(self, ctx: RequestContext, exc: GatewayError) -> bytes:
        self._events.append(b"event: error\ndata: " + error_json(exc) + b"\n\n")
        return self._flush()

    # --- events ---------------------------------------------------------------------

    def _emit(self, kind: str, **fields: object) -> None:
        self._events.append(b"event: " + kind.encode() + b"\ndata: " + _encode({"type": kind, **fields}) + b"\n\n")

    def _flush(self) -> bytes:
        out = b"".join(self._events)
        self._events.clear()
        return out

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._emit("message_start", message=self.head.message([], None, None, usage_object(None)))
            self._emit("ping")

    def _begin(self, block: JsonObject) -> int:
        self._close()
        index = self._open = self._blocks
        self._blocks += 1
        self._emit("content_block_start", index=index, content_block=block)
        return index

    def _close(self) -> None:
        if self._open is not None:
            self._emit("content_block_stop", index=self._open)
            self._open, self._text_open = None, False

    def _text(self, text: str) -> None:
        if not self._text_open:
            self._begin({"type": "text", "text": ""})
            self._text_open = True
        self._emit("content_block_delta", index=self._open, delta={"type": "text_delta", "text": text})

    def _call(self, call: ToolCall) -> None:
        function = call.function or Function()
        index = self._calls.get(call.index)
        if index is None:
            block_id = call.id or f"toolu_{self.head.message_id.removeprefix('msg_')}_{call.index}"
            block = {"type": "tool_use", "id": block_id, "name": function.name or "", "input": {}}
            index = self._calls[call.index] = self._begin(block)
        # An upstream that interleaves calls' fragments (none seen so far) gets them under each call's own
        # index, which the SDK accumulates by; blocks are otherwise streamed one after the other.
        if function.arguments:
            self._emit("content_block_delta", index=index, delta={"type": "input_json_delta", "partial_json": function.arguments})
