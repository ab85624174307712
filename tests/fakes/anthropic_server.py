"""A fake Anthropic Messages API: POST /v1/messages, replaying the documented wire format.

``GET /v1/models`` answers a one-model list (what the engine's health probe
asks; counted in ``model_lists``, not recorded in ``requests``).

Behaviour is chosen by the request's model name:

- ``claude-tool``: a text block then a ``tool_use`` block (stop_reason ``tool_use``);
  streamed, the tool input arrives as ``input_json_delta`` fragments.
- ``claude-status-<code>``: that HTTP status with Anthropic's error body; 429 also
  sends ``retry-after: 7``. ``claude-overloaded`` is ``claude-status-529``.
- ``claude-ratelimited-date``: a 429 whose ``retry-after`` is an HTTP date
  ``RETRY_AFTER_DATE_S`` seconds ahead.
- ``claude-midstream-error``: a stream that sends some text, then an ``error`` event.
- ``claude-truncated``: a stream that ends without ``message_stop``.
- ``claude-endless``: a stream of text deltas every 10 ms for ~10 s, recording
  when the client goes away (``disconnects``).
- ``claude-slow``: waits 2 s before answering.
- ``tools`` (tool_choice not ``none``), on any model but ``claude-tool``: a
  ``tool_use`` block calling the first (or the named) tool with input that its
  ``input_schema`` accepts, until the last turn carries a ``tool_result``.
- ``output_config.format`` (a JSON schema), on any model but ``claude-tool``:
  one text block, JSON that the schema accepts.
- anything else: the text ``REPLY_TEXT`` with cache usage ``USAGE``.

Every request is recorded (headers and decoded body) in ``requests``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import msgspec
from aiohttp import web

from bench.fake_json import sample_json

API_KEY = "test-anthropic-key"
REPLY_TEXT = "Hello from the fake Anthropic."
USAGE = {"input_tokens": 10, "cache_creation_input_tokens": 2, "cache_read_input_tokens": 4, "output_tokens": 6}
TOOL_INPUT = {"city": "Paris", "unit": "celsius"}
TOOL_USE_ID = "toolu_fake01"
RETRY_AFTER_DATE_S = 30
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


@dataclass
class RecordedRequest:
    headers: dict[str, str]
    body: dict[str, Any]
    # the client's (host, port): equal ports mean a reused keep-alive connection
    peer: tuple[str, int]


@dataclass
class FakeAnthropic:
    api_key: str = API_KEY
    requests: list[RecordedRequest] = field(default_factory=list)
    disconnects: int = 0
    model_lists: int = 0
    _runner: web.AppRunner | None = None
    base_url: str = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        self.model_lists += 1
        if request.headers.get("x-api-key") != self.api_key:
            return error_response(401, "invalid x-api-key")
        model = {"type": "model", "id": "claude-text", "display_name": "Claude", "created_at": "2025-01-01T00:00:00Z"}
        listing = {"data": [model], "has_more": False, "first_id": "claude-text", "last_id": "claude-text"}
        return web.json_response(listing)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = msgspec.json.decode(await request.read())
        peer = request.transport.get_extra_info("peername")[:2] if request.transport else ("", 0)
        self.requests.append(RecordedRequest(headers=dict(request.headers), body=body, peer=peer))
        if request.headers.get("x-api-key") != self.api_key:
            return error_response(401, "invalid x-api-key")
        if request.headers.get("anthropic-version") != "2023-06-01":
            return error_response(400, "anthropic-version header is required")
        if not isinstance(body.get("max_tokens"), int) or not body.get("messages"):
            return error_response(400, "max_tokens: Field required")
        model = body["model"]
        if model == "claude-overloaded":
            return error_response(529, "Overloaded")
        if model == "claude-ratelimited-date":
            retry_at = formatdate(time.time() + RETRY_AFTER_DATE_S, usegmt=True)
            return error_response(429, "rate limited", {"retry-after": retry_at})
        if model.startswith("claude-status-"):
            return error_response(int(model.removeprefix("claude-status-")), f"fake error for {model}")
        if model == "claude-slow":
            await asyncio.sleep(2)
        message = tool_message(model) if model == "claude-tool" else text_message(model)
        called = _chosen_tool(body) if model != "claude-tool" else None
        if called is not None:
            call_input = sample_json(called.get("input_schema", {"type": "object"}))
            message["content"] = [{"type": "tool_use", "id": TOOL_USE_ID, "name": called["name"], "input": call_input}]
            message["stop_reason"] = "tool_use"
        output_format = (body.get("output_config") or {}).get("format")
        if model != "claude-tool" and output_format is not None:
            if output_format.get("type") != "json_schema" or not isinstance(output_format.get("schema"), dict):
                return error_response(400, "output_config.format: a json_schema with a schema is required")
            answer = msgspec.json.encode(sample_json(output_format["schema"])).decode()
            message["content"] = [{"type": "text", "text": answer}]
        if not body.get("stream"):
            return web.json_response(message)
        return await self._stream(request, model, message)

    async def _stream(self, request: web.Request, model: str, message: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await resp.prepare(request)
        if model == "claude-endless":
            await self._endless(resp, message)
            return resp
        events = stream_events(message)
        if model == "claude-midstream-error":
            events = [*events[:4], {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}]
        elif model == "claude-truncated":
            events = events[:4]
        for event in events:
            await resp.write(sse(event))
        return resp

    async def _endless(self, resp: web.StreamResponse, message: dict[str, Any]) -> None:
        try:
            for event in stream_events(message)[:3]:
                await resp.write(sse(event))
            for _ in range(1000):
                await asyncio.sleep(0.01)
                await resp.write(
                    sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "more "}})
                )
        except ConnectionResetError:
            self.disconnects += 1


def _chosen_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool a model that always uses its tools calls: none once the last turn carries a tool result."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    if not tools or choice.get("type") == "none":
        return None
    last = body["messages"][-1].get("content")
    if isinstance(last, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last):
        return None
    named = choice.get("name") if choice.get("type") == "tool" else None
    chosen: dict[str, Any] = next((t for t in tools if t.get("name") == named), tools[0])
    return chosen


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}
    if headers is None and status == 429:
        headers = {"retry-after": "7"}
    return web.json_response(body, status=status, headers=headers)


def text_message(model: str) -> dict[str, Any]:
    return {
        "id": "msg_fake_text",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": REPLY_TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": dict(USAGE),
    }


def tool_message(model: str) -> dict[str, Any]:
    message = text_message(model)
    message["id"] = "msg_fake_tool"
    message["content"] = [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": TOOL_USE_ID, "name": "get_weather", "input": TOOL_INPUT},
    ]
    message["stop_reason"] = "tool_use"
    return message


def stream_events(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The event sequence Anthropic streams for ``message``, fragmenting text and tool input."""
    usage = message["usage"]
    start_usage = {**usage, "output_tokens": 1}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {**message, "content": [], "stop_reason": None, "usage": start_usage}},
    ]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(
                {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
            )
            if index == 0:
                events.append({"type": "ping"})
            for piece in _split(block["text"], 3):
                events.append(
                    {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}}
                )
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            events.append({"type": "content_block_start", "index": index, "content_block": start})
            encoded = msgspec.json.encode(block["input"]).decode()
            for piece in ["", *_split(encoded, 3)]:
                delta = {"type": "input_json_delta", "partial_json": piece}
                events.append({"type": "content_block_delta", "index": index, "delta": delta})
        events.append({"type": "content_block_stop", "index": index})
    final_usage = {"output_tokens": usage["output_tokens"]}
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": final_usage,
        }
    )
    events.append({"type": "message_stop"})
    return events


def sse(event: dict[str, Any]) -> bytes:
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + msgspec.json.encode(event) + b"\n\n"


def _split(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]
