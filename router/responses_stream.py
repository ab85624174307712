"""The Responses surface's renderer: a chat completion, or a chat stream, as the Responses API answers.

A stream becomes the API's typed events, each framed ``event: TYPE`` /
``data: JSON`` with a ``sequence_number``: ``response.created`` and
``response.in_progress`` first; then per output item ``output_item.added``,
its parts and deltas, and ``output_item.done``; then ``response.completed``
(``response.incomplete`` when the model stopped at its token limit). An error
after the first byte is an ``error`` event followed by ``response.failed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from core.errors import GatewayError, UpstreamError
from router.chat_read import UNREADABLE, ChatUsage, ToolCall, decode_completion
from router.context import RequestContext
from router.responses_render import (
    INCOMPLETE,
    EventWriter,
    JsonObject,
    ResponseHead,
    call_item,
    failure,
    message_item,
    output_text,
    refusal,
    unary_response,
    usage_object,
)

_encode = msgspec.json.encode
# Per kind of content part: its empty part, and the events and field that carry its text.
_PARTS = {
    "output_text": (output_text(""), "response.output_text.delta", "response.output_text.done", "text"),
    "refusal": (refusal(""), "response.refusal.delta", "response.refusal.done", "refusal"),
}


@dataclass(slots=True)
class _Message:
    index: int
    item_id: str
    parts: list[JsonObject] = field(default_factory=list)
    kind: str | None = None  # of the part being streamed
    text: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Call:
    index: int
    item_id: str
    call_id: str
    name: str
    arguments: list[str] = field(default_factory=list)


class ResponsesRenderer(EventWriter):
    """One request's renderer (``router.render.Renderer``); a stream's state lives here between chunks."""

    def __init__(self, head: ResponseHead) -> None:
        super().__init__()
        self.head = head
        # The finished Response object, once there is one: what the route stores.
        self.final: JsonObject | None = None
        self._rid = head.response_id.removeprefix("resp_")
        self._started = False
        self._next_index = 0
        self._items: dict[int, JsonObject] = {}  # finished output items by output_index
        self._message: _Message | None = None
        self._calls: dict[int, _Call] = {}  # open calls by the chat tool call's index
        self._finish: str | None = None
        self._usage: ChatUsage | None = None

    def unary(self, ctx: RequestContext, body: bytes) -> bytes:
        try:
            response = unary_response(self.head, body, ctx.usage)
        except UNREADABLE:
            raise UpstreamError(f"deployment {ctx.deployment} returned a completion the Responses API cannot express") from None
        self.final = response
        return _encode(response)

    def chunk(self, ctx: RequestContext, data: bytes) -> bytes:
        self._start()
        try:
            completion = decode_completion(data)
        except UNREADABLE:
            return self._flush()  # nothing in it a Response can show
        if completion.usage is not None:
            self._usage = completion.usage
        for choice in completion.choices:
            delta = choice.delta
            if choice.index != 0 or delta is None:
                continue
            if delta.content:
                self._text("output_text", delta.content)
            if delta.refusal:
                self._text("refusal", delta.refusal)
            for call in delta.tool_calls or ():
                self._call(call)
            if choice.finish_reason is not None:
                self._finish = choice.finish_reason
        return self._flush()

    def end(self, ctx: RequestContext) -> bytes:
        self._start()
        self._close_items("incomplete" if self._finish in INCOMPLETE else "completed")
        usage = usage_object(self._usage if self._usage is not None else ctx.usage)
        response = self.head.response("completed", self._output(), usage, finish=self._finish)
        self.final = response
        self._emit("response.incomplete" if response["status"] == "incomplete" else "response.completed", response=response)
        return self._flush()

    def error(self, ctx: RequestContext, exc: GatewayError) -> bytes:
        self._start()
        self._close_items("incomplete")
        self._emit("error", code=exc.code, message=exc.message, param=exc.param)
        self._emit("response.failed", response=self.head.response("failed", self._output(), error=failure(exc)))
        return self._flush()

    # --- events ---------------------------------------------------------------------

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._emit("response.created", response=self.head.response("in_progress", []))
            self._emit("response.in_progress", response=self.head.response("in_progress", []))

    def _output(self) -> list[JsonObject]:
        return [self._items[i] for i in sorted(self._items)]

    def _open(self) -> int:
        index, self._next_index = self._next_index, self._next_index + 1
        return index

    def _text(self, kind: str, text: str) -> None:
        message = self._message
        if message is None:
            self._close_calls("completed")  # text after calls: a message of its own, after them
            index = self._open()
            item_id = f"msg_{self._rid}" if index == 0 else f"msg_{self._rid}_{index}"
            message = self._message = _Message(index, item_id)
            self._emit("response.output_item.added", output_index=index, item=message_item(item_id, [], "in_progress"))
        where = {"item_id": message.item_id, "output_index": message.index}
        if message.kind != kind:
            self._close_part(message)
            message.kind = kind
            self._emit("response.content_part.added", **where, content_index=len(message.parts), part=_PARTS[kind][0])
        message.text.append(text)
        extra: dict[str, object] = {"logprobs": []} if kind == "output_text" else {}
        self._emit(_PARTS[kind][1], **where, content_index=len(message.parts), delta=text, **extra)

    def _close_part(self, message: _Message) -> None:
        kind = message.kind
        if kind is None:
            return
        _, _, done, name = _PARTS[kind]
        text = "".join(message.text)
        part = output_text(text) if kind == "output_text" else refusal(text)
        where = {"item_id": message.item_id, "output_index": message.index, "content_index": len(message.parts)}
        extra: dict[str, object] = {"logprobs": []} if kind == "output_text" else {}
        self._emit(done, **where, **{name: text}, **extra)
        self._emit("response.content_part.done", **where, part=part)
        message.parts.append(part)
        message.kind, message.text = None, []

    def _call(self, delta: ToolCall) -> None:
        function = delta.function
        state = self._calls.get(delta.index)
        if state is None:
            self._close_message("completed")
            call_id = delta.id or f"call_{self._rid}_{delta.index}"
            name = (function.name if function is not None else None) or ""
            state = self._calls[delta.index] = _Call(self._open(), f"fc_{self._rid}_{delta.index}", call_id, name)
            item = call_item(state.item_id, call_id, name, "", "in_progress")
            self._emit("response.output_item.added", output_index=state.index, item=item)
        elif function is not None and function.name and not state.name:
            state.name = function.name
        if function is not None and function.arguments:
            state.arguments.append(function.arguments)
            self._emit("response.function_call_arguments.delta", item_id=state.item_id, output_index=state.index, delta=function.arguments)

    def _close_message(self, status: str) -> None:
        message = self._message
        if message is None:
            return
        self._close_part(message)
        item = message_item(message.item_id, message.parts, status)
        self._emit("response.output_item.done", output_index=message.index, item=item)
        self._items[message.index] = item
        self._message = None

    def _close_calls(self, status: str) -> None:
        for state in sorted(self._calls.values(), key=lambda s: s.index):
            arguments = "".join(state.arguments)
            self._emit("response.function_call_arguments.done", item_id=state.item_id, output_index=state.index, arguments=arguments)
            item = call_item(state.item_id, state.call_id, state.name, arguments, status)
            self._emit("response.output_item.done", output_index=state.index, item=item)
            self._items[state.index] = item
        self._calls.clear()

    def _close_items(self, status: str) -> None:
        # In the order they were opened: a message is before its calls, or after them.
        if self._message is not None and all(self._message.index < c.index for c in self._calls.values()):
            self._close_message(status)
        self._close_calls(status)
        self._close_message(status)
