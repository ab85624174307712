"""Request handlers of the fake upstream: parse, record, pick a behaviour, answer.

See ``bench.fake_upstream`` for the behaviours and how to run the server.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from email.utils import formatdate
from typing import Annotated

import msgspec
from aiohttp import web

from bench import fake_replies as replies
from bench import fake_responses
from bench.fake_replies import JsonObject
from bench.fake_streams import chat_events, completion_events, sse

RECORD_LIMIT = 1000
# chunks sent before a mid-stream failure (role chunk + two words for chat)
MIDSTREAM_AFTER = 3
MAX_BODY_BYTES = 64 * 1024 * 1024
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
DEFAULT_DELAY_MS = 2000
MAX_DELAY_MS = 600_000


class Override(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A running server's own behaviour, set through ``/_fake/behavior``: None leaves it unset."""

    behavior: str | None = None
    # How long ``slow`` waits when the request sends no ``x-fake-delay-ms``.
    delay_ms: Annotated[int, msgspec.Meta(ge=0, le=MAX_DELAY_MS)] | None = None

    def __post_init__(self) -> None:
        if self.behavior is not None and self.behavior not in replies.BEHAVIORS:
            raise ValueError(f"unknown behavior {self.behavior!r}; expected one of {', '.join(sorted(replies.BEHAVIORS))}")


def _json_response(payload: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(payload), status=status, content_type="application/json", headers=headers
    )


def _invalid(message: str) -> web.Response:
    return _json_response(replies.error_detail(message, "invalid_request_error"), 400)


def _int_header(request: web.Request, name: str, default: int, upper: int) -> int:
    raw = request.headers.get(name)
    if raw is None or not raw.strip().isdigit():
        return default
    return min(int(raw), upper)


async def _drop(request: web.Request) -> None:
    """Close the socket once what was written has left, with no HTTP ending."""
    transport = request.transport
    if transport is None:
        return
    for _ in range(100):
        if transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.01)
    transport.abort()


async def _send_stream(
    request: web.Request, events: list[bytes], behavior: str, per_write: int, failure: bytes | None = None
) -> web.StreamResponse:
    response = web.StreamResponse(headers=_SSE_HEADERS)
    await response.prepare(request)
    delay = _int_header(request, "x-fake-chunk-delay-ms", 0, 60_000) / 1000
    failing = behavior in replies.STREAM_BEHAVIORS
    # never let a failing stream reach [DONE]
    cut = min(MIDSTREAM_AFTER, len(events) - 1) if failing else len(events)
    try:
        for start in range(0, cut, per_write):
            if delay:
                await asyncio.sleep(delay)
            end = min(start + per_write, cut)
            await response.write(events[start] if end - start == 1 else b"".join(events[start:end]))
        if behavior == "disconnect_midstream":
            await _drop(request)
            return response
        if behavior == "error_midstream":
            await response.write(failure or sse(replies.error_detail("The upstream failed mid-stream.")))
        await response.write_eof()
    except ConnectionResetError:
        # the client went away mid-stream: nobody is left to answer
        pass
    return response


class Handlers:
    """The endpoints, sharing the recorded requests and the server defaults."""

    def __init__(self, default_chunks: int, chunks_per_write: int) -> None:
        self.requests: deque[JsonObject] = deque(maxlen=RECORD_LIMIT)
        self.default_chunks = default_chunks
        self.chunks_per_write = chunks_per_write
        self._ids = itertools.count(1)
        self.override = Override()

    def set_behavior(self, behavior: str | None, delay_ms: int | None = None) -> None:
        """Override what every later request gets (ValueError for an unknown behavior); None, None: back to per-request choice."""
        try:
            self.override = msgspec.convert({"behavior": behavior, "delay_ms": delay_ms}, Override)
        except msgspec.ValidationError as exc:
            raise ValueError(str(exc)) from None

    def _behavior(self, request: web.Request, model: str, body: JsonObject) -> str:
        header = request.headers.get("x-fake-behavior")
        if not header and self.override.behavior is not None:
            return self.override.behavior
        return replies.behavior_of(model, header, body)

    def record(self, request: web.Request, body: object) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": headers,
                "json": body,
            }
        )

    def _envelope(self, prefix: str, kind: str, model: str) -> JsonObject:
        return {"id": f"{prefix}-fake{next(self._ids)}", "object": kind, "created": int(time.time()), "model": model}

    async def _begin(self, request: web.Request) -> tuple[JsonObject, str] | web.Response:
        """Parse and record the body; give back (body, behavior) or a 400."""
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            self.record(request, None)
            return _invalid("The request body is not valid JSON.")
        self.record(request, body)
        if not isinstance(body, dict):
            return _invalid("The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _invalid("'model' is required.")
        return body, self._behavior(request, model, body)

    async def _misbehave(self, request: web.Request, behavior: str, stream: bool) -> web.Response | None:
        """The early answer a behavior forces, if any; sleeps for ``slow``."""
        if behavior == "error_midstream" and not stream:
            behavior = "error_500"
        if behavior in replies.ERROR_BEHAVIORS:
            status, payload = replies.error_body(behavior)
            return _json_response(payload, status, _retry_after(behavior))
        if behavior == "disconnect_midstream" and not stream:
            await _drop(request)
            return web.Response()
        if behavior == "slow":
            default = self.override.delay_ms if self.override.delay_ms is not None else DEFAULT_DELAY_MS
            await asyncio.sleep(_int_header(request, "x-fake-delay-ms", default, MAX_DELAY_MS) / 1000)
        return None

    def _words(self, request: web.Request, behavior: str, stream: bool) -> int:
        if behavior == "huge":
            return replies.HUGE_STREAM_WORDS if stream else replies.HUGE_WORDS
        return _int_header(request, "x-fake-chunks", self.default_chunks, 100_000)

    def _reply(self, request: web.Request, body: JsonObject, behavior: str, stream: bool) -> replies.Reply:
        if behavior == "echo":
            return replies.echo_reply(body)
        words = self._words(request, behavior, stream)
        honour = behavior != "ignore_max_tokens"
        return replies.structured_reply(body, words, honour) or replies.plan_reply(body, words, honour)

    async def _stream(self, request: web.Request, events: list[bytes], behavior: str, failure: bytes | None = None) -> web.StreamResponse:
        per_write = _int_header(request, "x-fake-chunks-per-write", self.chunks_per_write, 100_000)
        return await _send_stream(request, events, behavior, max(per_write, 1), failure)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        begun = await self._begin(request)
        if isinstance(begun, web.Response):
            return begun
        body, behavior = begun
        messages = body.get("messages")
        if not isinstance(messages, list):
            return _invalid("'messages' must be a list.")
        stream = body.get("stream") is True
        early = await self._misbehave(request, behavior, stream)
        if early is not None:
            return early
        reply = self._reply(request, body, behavior, stream)
        call = replies.tool_call(body)
        prompt = replies.chat_prompt_tokens(messages)
        envelope = self._envelope("chatcmpl", "chat.completion.chunk" if stream else "chat.completion", body["model"])
        if stream:
            events = chat_events(envelope, reply, call, prompt, _wants_usage(body, behavior))
            return await self._stream(request, events, behavior)
        payload = replies.chat_body(envelope, reply, call)
        if behavior != "no_usage":
            payload["usage"] = replies.usage(prompt, replies.completion_tokens(reply, call))
        return _json_response(payload)

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """The Responses API (``bench.fake_responses``), OpenAI's and Azure's v1 path alike."""
        begun = await self._begin(request)
        if isinstance(begun, web.Response):
            return begun
        body, _ = begun
        refused = fake_responses.refusal(body)
        if refused is not None:
            return _json_response(refused[1], refused[0])
        view = fake_responses.chat_view(body)
        behavior = self._behavior(request, body["model"], view)  # a prompt's directive is in the input
        stream = body.get("stream") is True
        early = await self._misbehave(request, behavior, stream)
        if early is not None:
            return early
        answer = fake_responses.Answer(body, view, self._reply(request, view, behavior, stream), next(self._ids))
        with_usage = behavior != "no_usage"
        if stream:
            # A failing stream stops after MIDSTREAM_AFTER events: the error event comes next.
            failure = fake_responses.failure_event(MIDSTREAM_AFTER)
            return await self._stream(request, answer.events(with_usage), behavior, failure)
        return _json_response(answer.body_json(with_usage))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        begun = await self._begin(request)
        if isinstance(begun, web.Response):
            return begun
        body, behavior = begun
        stream = body.get("stream") is True
        early = await self._misbehave(request, behavior, stream)
        if early is not None:
            return early
        reply = self._reply(request, body, behavior, stream)
        prompt = replies.completion_prompt_tokens(body.get("prompt"))
        envelope = self._envelope("cmpl", "text_completion", body["model"])
        if stream:
            events = completion_events(envelope, reply, prompt, _wants_usage(body, behavior))
            return await self._stream(request, events, behavior)
        payload = replies.completion_body(envelope, reply)
        if behavior != "no_usage":
            payload["usage"] = replies.usage(prompt, reply.completion_tokens)
        return _json_response(payload)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        begun = await self._begin(request)
        if isinstance(begun, web.Response):
            return begun
        body, behavior = begun
        early = await self._misbehave(request, behavior, stream=False)
        if early is not None:
            return early
        payload = replies.embeddings_body(body, body["model"], behavior)
        if behavior == "no_usage":
            del payload["usage"]
        return _json_response(payload)

    async def models(self, request: web.Request) -> web.StreamResponse:
        self.record(request, None)
        return _json_response(replies.models_body())

    async def recorded(self, request: web.Request) -> web.StreamResponse:
        return _json_response(list(self.requests))

    async def clear(self, request: web.Request) -> web.StreamResponse:
        self.requests.clear()
        return web.Response(status=204)

    async def get_override(self, request: web.Request) -> web.StreamResponse:
        return _json_response(msgspec.to_builtins(self.override))

    async def post_override(self, request: web.Request) -> web.StreamResponse:
        try:
            self.override = msgspec.json.decode(await request.read(), type=Override)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _invalid(f"Invalid behavior override: {exc}.")
        return _json_response(msgspec.to_builtins(self.override))

    async def delete_override(self, request: web.Request) -> web.StreamResponse:
        self.override = Override()
        return web.Response(status=204)


def _retry_after(behavior: str) -> dict[str, str] | None:
    if behavior == "error_429_date":
        return {"Retry-After": formatdate(time.time() + replies.RETRY_AFTER_DATE_S, usegmt=True)}
    return {"Retry-After": "1"} if behavior == "error_429" else None


def _wants_usage(body: JsonObject, behavior: str) -> bool:
    options = body.get("stream_options")
    asked = isinstance(options, dict) and options.get("include_usage") is True
    return asked and behavior != "no_usage"
