"""The renderer of a Responses request that a deployment with the Responses API may serve.

When such a deployment served it, the answer already is a Response (or its
events): it is relayed with the gateway's response id, the alias as its model,
and the request's own settings where the gateway changed them on the way up
(``store``, ``previous_response_id``, ``max_output_tokens``, ``metadata``) or
the PII step may have (``instructions``, ``tools``). Events keep their order and
get the gateway's sequence numbers; under ``mask_and_restore`` their texts get
the client's values back, a placeholder split over deltas held until it is
whole. The items still open are kept, so that a stream cut short (a budget,
an upstream failure) closes them and ends as a translated stream does:
``response.incomplete``, or ``error`` then ``response.failed``.

When a translated deployment served it (a fallback), the chat answer is
rendered by ``ResponsesRenderer``. Either way the finished Response is left in
``final`` for the route to store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from core.errors import GatewayError, UpstreamError
from router.context import RequestContext
from router.responses_render import EventWriter, JsonObject, ResponseHead, failure, usage_object
from router.responses_stream import ResponsesRenderer
from serving.base import serves_responses

if TYPE_CHECKING:
    from policies.pii_restore import Restorer

_encode = msgspec.json.encode
_decode = msgspec.json.decode
# What the Response repeats of the request as the client sent it, not as the upstream got it.
GATEWAY_ECHO = ("instructions", "max_output_tokens", "metadata", "previous_response_id", "store", "tools")
_RESPONSE_EVENTS = frozenset({"response.created", "response.in_progress", "response.queued"})
_END_EVENTS = frozenset({"response.completed", "response.incomplete"})
# A text's delta event --> its done event, and the field (of the done event, and of a content part) holding the text.
_DELTAS = {
    "response.output_text.delta": ("response.output_text.done", "text"),
    "response.refusal.delta": ("response.refusal.done", "refusal"),
    "response.function_call_arguments.delta": ("response.function_call_arguments.done", "arguments"),
}
_DONES = {done: delta for delta, (done, _) in _DELTAS.items()}
_ARGUMENTS = "response.function_call_arguments.delta"


@dataclass(slots=True)
class _Open:
    """An output item added and not yet done: what it holds so far."""

    item: JsonObject
    parts: dict[int, JsonObject] = field(default_factory=dict)  # by content_index
    closed: set[int] = field(default_factory=set)  # parts done
    arguments: list[str] = field(default_factory=list)


class NativeRenderer(EventWriter):
    """One request's renderer (``router.render.Renderer``)."""

    def __init__(self, head: ResponseHead) -> None:
        super().__init__()
        self.head = head
        self.translated = ResponsesRenderer(head)
        self._native: bool | None = None  # known once a deployment served the request
        self._restorer: Restorer | None = None
        self._final: JsonObject | None = None
        self._base: JsonObject | None = None  # the latest Response object relayed
        self._open: dict[int, _Open] = {}  # by output_index
        self._done: dict[int, JsonObject] = {}
        self._held: dict[tuple[int, int, str], str] = {}  # (output_index, content_index, delta event) --> text

    @property
    def final(self) -> JsonObject | None:
        return self._final if self._native else self.translated.final

    def _serves_natively(self, ctx: RequestContext) -> bool:
        if self._native is None:
            served = ctx.served
            self._native = served is not None and serves_responses(served.engine)
            if self._native and served is not None and served.config.privacy == "cloud":
                self._restorer = ctx.restorer
        return self._native

    # --- the Renderer interface -------------------------------------------------------

    def unary(self, ctx: RequestContext, body: bytes) -> bytes:
        if not self._serves_natively(ctx):
            return self.translated.unary(ctx, body)
        try:
            upstream = _decode(body)
        except msgspec.DecodeError:
            upstream = None
        if not isinstance(upstream, dict) or not isinstance(upstream.get("output"), list):
            raise UpstreamError(f"deployment {ctx.deployment} returned a body that is not a Response")
        self._final = self._adopt(upstream)
        return _encode(self._final)

    def chunk(self, ctx: RequestContext, data: bytes) -> bytes:
        if not self._serves_natively(ctx):
            return self.translated.chunk(ctx, data)
        try:
            event = _decode(data)
        except msgspec.DecodeError:
            return b""
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return b""  # not an event (a budget's cut-off speaks chat): the end closes what is open
        kind: str = event.pop("type")
        event.pop("sequence_number", None)
        response = event.get("response")
        if kind in _RESPONSE_EVENTS or kind in _END_EVENTS:
            if isinstance(response, dict):
                event["response"] = self._base = self._adopt(response)
                if kind in _END_EVENTS:
                    self._final = self._base
        elif isinstance(event.get("output_index"), int):
            self._track(kind, event)
        self._emit(kind, **event)
        return self._flush()

    def end(self, ctx: RequestContext) -> bytes:
        if not self._serves_natively(ctx):
            return self.translated.end(ctx)
        if self._final is None:  # cut short by the gateway (a budget): what went out, closed as incomplete
            self._close_open()
            response = {**self._response("incomplete"), "incomplete_details": {"reason": "max_output_tokens"}}
            self._final = {**response, "usage": usage_object(ctx.usage)}
            self._emit("response.incomplete", response=self._final)
        return self._flush()

    def error(self, ctx: RequestContext, exc: GatewayError) -> bytes:
        if not self._serves_natively(ctx):
            return self.translated.error(ctx, exc)
        self._close_open()
        self._emit("error", code=exc.code, message=exc.message, param=exc.param)
        self._emit("response.failed", response={**self._response("failed"), "error": failure(exc)})
        return self._flush()

    # --- Response objects ---------------------------------------------------------------

    def _adopt(self, response: JsonObject) -> JsonObject:
        """The upstream's Response as the gateway's."""
        head = self.head
        out = {**response, "id": head.response_id, "created_at": head.created_at, "model": head.model}
        out.update((key, head.echo[key]) for key in GATEWAY_ECHO)
        output = response.get("output")
        if self._restorer is not None and isinstance(output, list):
            out["output"] = [restore_item(item, self._restorer) for item in output]
        return out

    def _response(self, status: str) -> JsonObject:
        base = self._base if self._base is not None else self.head.response("in_progress", [])
        return {**base, "status": status, "output": [self._done[i] for i in sorted(self._done)]}

    # --- events ---------------------------------------------------------------------------

    def _track(self, kind: str, event: JsonObject) -> None:
        """Keep what an item holds so far; give texts their values back (the event is changed in place)."""
        index: int = event["output_index"]
        item = event.get("item")
        if kind == "response.output_item.added" and isinstance(item, dict):
            self._open[index] = _Open(dict(item))
            return
        if kind == "response.output_item.done" and isinstance(item, dict):
            if self._restorer is not None:
                item = event["item"] = restore_item(item, self._restorer)
            self._open.pop(index, None)
            self._done[index] = item
            return
        opened = self._open.get(index)
        content = event.get("content_index", 0)
        if opened is None or not isinstance(content, int):
            return
        part = event.get("part")
        if kind == "response.content_part.added" and isinstance(part, dict):
            opened.parts[content] = dict(part)
        elif kind == "response.content_part.done" and isinstance(part, dict):
            opened.parts[content] = event["part"] = restore_part(part, self._restorer)
            opened.closed.add(content)
        elif kind in _DELTAS and isinstance(event.get("delta"), str):
            event["delta"] = self._pass(kind, index, content, event["delta"])
            self._add(opened, kind, content, event["delta"])
        elif kind in _DONES:
            where: JsonObject = {k: event[k] for k in ("item_id", "output_index", "content_index") if k in event}
            self._release(opened, _DONES[kind], index, content, where)
            name = _DELTAS[_DONES[kind]][1]
            if self._restorer is not None and isinstance(event.get(name), str):
                event[name] = self._restore(_DONES[kind], event[name])

    def _add(self, opened: _Open, kind: str, content: int, text: str) -> None:
        if kind == _ARGUMENTS:
            opened.arguments.append(text)
            return
        part = opened.parts.setdefault(content, {"type": "output_text", "text": "", "annotations": []})
        name = _DELTAS[kind][1]
        part[name] = str(part.get(name) or "") + text

    def _pass(self, kind: str, index: int, content: int, text: str) -> str:
        """A delta's text with placeholders restored; a trailing piece that may start one is held back."""
        restorer = self._restorer
        if restorer is None:
            return text
        key = (index, content, kind)
        text = self._held.pop(key, "") + text
        cut = restorer.partial_start(text)
        if cut < len(text):
            self._held[key] = text[cut:]
            text = text[:cut]
        return self._restore(kind, text)

    def _restore(self, kind: str, text: str) -> str:
        assert self._restorer is not None
        return self._restorer.restore_json_text(text) if kind == _ARGUMENTS else self._restorer.restore_text(text)

    def _release(self, opened: _Open, kind: str, index: int, content: int, where: JsonObject) -> None:
        """What was held back of a text, sent as one more delta before the text is done."""
        rest = self._held.pop((index, content, kind), None)
        if rest:
            rest = self._restore(kind, rest)
            self._add(opened, kind, content, rest)
            self._emit(kind, **where, delta=rest, **({"logprobs": []} if kind == "response.output_text.delta" else {}))

    def _close_open(self) -> None:
        """Close the items still open, as incomplete, with what they hold."""
        for index in sorted(self._open):
            opened = self._open.pop(index)
            item = opened.item
            where: JsonObject = {"item_id": item.get("id"), "output_index": index}
            if item.get("type") == "message":
                for content in sorted(set(opened.parts) - opened.closed):
                    part = opened.parts[content]
                    kind = "response.refusal.delta" if part.get("type") == "refusal" else "response.output_text.delta"
                    self._release(opened, kind, index, content, {**where, "content_index": content})
                    done, name = _DELTAS[kind]
                    extra: JsonObject = {"logprobs": []} if kind == "response.output_text.delta" else {}
                    self._emit(done, **where, content_index=content, **{name: part.get(name, "")}, **extra)
                    self._emit("response.content_part.done", **where, content_index=content, part=part)
                item = {**item, "content": [opened.parts[c] for c in sorted(opened.parts)]}
            elif item.get("type") == "function_call":
                self._release(opened, _ARGUMENTS, index, 0, where)
                arguments = "".join(opened.arguments)
                self._emit("response.function_call_arguments.done", **where, arguments=arguments)
                item = {**item, "arguments": arguments}
            item = {**item, "status": "incomplete"}
            self._emit("response.output_item.done", output_index=index, item=item)
            self._done[index] = item


# --- restoring the client's values --------------------------------------------------------


def restore_item(item: JsonObject, restorer: Restorer) -> JsonObject:
    """An output item with placeholders replaced by the values they stand for."""
    out = dict(item)
    kind = item.get("type")
    if kind == "message" and isinstance(item.get("content"), list):
        out["content"] = [restore_part(p, restorer) for p in item["content"]]
    elif kind == "function_call" and isinstance(item.get("arguments"), str):
        out["arguments"] = restorer.restore_json_text(item["arguments"])
    elif kind == "reasoning" and isinstance(item.get("summary"), list):
        out["summary"] = [restore_part(p, restorer) for p in item["summary"]]
    return out


def restore_part(part: Any, restorer: Restorer | None) -> Any:
    if restorer is None or not isinstance(part, dict):
        return part
    out = dict(part)
    for name in ("text", "refusal"):
        if isinstance(out.get(name), str):
            out[name] = restorer.restore_text(out[name])
    return out
