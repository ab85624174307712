"""The OpenAI Responses API: create, retrieve, delete, and list a response's input items.

Create is served by the same pipeline as chat (``router.serve.run``). For an
alias served by translation only, the request becomes a chat body
(``router.responses_surface``) and the answer is rendered back
(``router.responses_stream``). For an alias with a deployment whose upstream has
the Responses API, the request keeps its Responses body and each attempt picks
its form (``router.responses_native``); a native answer is relayed
(``router.responses_relay``). Either way a ``previous_response_id`` is expanded
here, from the gateway's own store. A request with ``mcp`` tools is served by
translation, as a loop of model calls and tool calls (``router.responses_mcp``).
With ``store`` (the default) the response is kept for its tenant
(``router.responses_store``) before the client has all of it, so that a
``previous_response_id`` sent right after finds it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import GatewayError, InvalidRequest, NotFound, PermissionDenied
from core.principal import Principal
from router.answers import JsonAnswer, StreamAnswer
from router.body import read_body
from router.context import RequestContext
from router.decode import decode_object
from router.gateway import Gateway
from router.openapi import BODY
from router.responses_mcp import McpRun
from router.responses_mcp_plan import approved, echo_tools, resolve
from router.responses_mcp_stream import McpEvents
from router.responses_mcp_wire import take_mcp_tools
from router.responses_native import ResponsesContext, native_alias
from router.responses_records import StoredResponse
from router.responses_relay import NativeRenderer
from router.responses_render import JsonObject, ResponseHead
from router.responses_stream import ResponsesRenderer
from router.responses_surface import chat_body, echo, input_items, responses_body
from router.responses_wire import Native, ResponsesRequest, decode_native, decode_request, request_model
from router.routes_openai import new_request_id
from router.serve import run

log = logging.getLogger("sluicegate.responses")
ROUTE = "responses"
JSON = "application/json"
_encode = msgspec.json.encode
_items = msgspec.json.Decoder(list[JsonObject]).decode
_MAX_LISTED = 100
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


def _gateway(request: Request[Any, Any, Any]) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _principal(request: Request[Any, Any, Any], gateway: Gateway) -> Principal:
    principal = await gateway.authenticate(request.headers.get("authorization"))
    if principal.key_id.startswith("jwt:") and not principal.has_scope("inference"):
        raise PermissionDenied("This token lacks the `inference` scope the OpenAI endpoints need.")
    return principal


@dataclass(slots=True)
class _Created:
    """One create request, admitted: what the pipeline runs, and what is stored once it is answered."""

    ctx: RequestContext | None  # None for a run with mcp tools (each round makes its own)
    renderer: ResponsesRenderer | NativeRenderer | McpRun | McpEvents
    store: bool
    items: list[JsonObject]  # this request's input
    history: list[JsonObject]  # the conversation it continues
    tenant: str
    stream: bool

    def record(self) -> StoredResponse | None:
        final = self.renderer.final
        if final is None:
            return None
        return StoredResponse(
            id=final["id"],
            tenant=self.tenant,
            created_at=final["created_at"],
            response=_encode(final),
            input_items=_encode(self.items),
            conversation=_encode([*self.history, *self.items, *final["output"]]),
        )


@post("/v1/responses", status_code=200, opt={BODY: ResponsesRequest})
async def create_response(request: Request[Any, Any, Any]) -> ASGIApp:
    gateway = _gateway(request)
    started = time.perf_counter()
    try:
        created = await _admit(request, gateway, started)
    except GatewayError as exc:
        # Refused before routing: the alias may be anything the client typed.
        gateway.metrics.observe(ROUTE, "-", exc.status, time.perf_counter() - started)
        raise
    if created.ctx is None:
        answer = await _mcp_answer(created)
    else:
        answer = await run(gateway, created.ctx, request.headers)
    if not created.store:
        return answer
    if not created.stream:
        await _save(gateway, created)
        return answer
    return _StoredBeforeEnd(answer, lambda: _save(gateway, created), created.renderer)


async def _admit(request: Request[Any, Any, Any], gateway: Gateway, started: float) -> _Created:
    """Authenticate, decode and validate, and load the conversation it continues; all before any work is done."""
    principal = await _principal(request, gateway)
    authenticated = time.perf_counter()
    raw = decode_object(await read_body(request, gateway.base.server.max_body_bytes))
    snapshot = gateway.reloader.current  # once: the request keeps it to its end
    mcp = take_mcp_tools(raw)
    # The alias decides the decoding: only one with the Responses API somewhere keeps what chat cannot carry.
    # A request with mcp tools is run by the gateway, through translation, whatever the alias.
    native: Native | None = None
    if mcp is not None:
        wanted, unknown = decode_request(raw, mcp=True)
    elif native_alias(snapshot.router.get(request_model(raw))):
        wanted, native, unknown = decode_native(raw)
    else:
        wanted, unknown = decode_request(raw)
    if unknown:
        gateway.metrics.unknown_fields.labels(ROUTE).inc(unknown)
    request_id = new_request_id()
    items = input_items(wanted, request_id)
    history: list[JsonObject] = []
    if wanted.previous_response_id is not None:
        previous = await gateway.responses.get(principal.tenant, wanted.previous_response_id)
        if previous is None:
            raise NotFound(
                f"Previous response with id '{wanted.previous_response_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        history = _items(previous.conversation)
    # The gateway's clock, as the store's expiry reads it.
    head = ResponseHead(f"resp_{request_id}", int(gateway.clock()), wanted.model, echo(wanted, native))
    common: dict[str, Any] = {
        "request_id": request_id,
        "snapshot": snapshot,
        "principal": principal,
        "route": ROUTE,
        "alias": wanted.model,
        "stream": wanted.stream,
        # The final event carries usage: a stream asks for its usage chunk.
        "include_usage": wanted.stream,
        "session_id": request.headers.get("x-session-id"),
        "started": started,
        "authenticated": authenticated,
    }
    if mcp is not None:
        head.echo["tools"] = echo_tools(head.echo["tools"], mcp)
        servers = await resolve(snapshot.plugins, principal, mcp)
        conversation = [*history, *items]
        mcp_run = McpRun(gateway, common, wanted, servers, conversation, approved(history, items, servers), head, request.headers)
        return _Created(None, mcp_run, wanted.store, items, history, principal.tenant, wanted.stream)
    renderer: ResponsesRenderer | NativeRenderer
    if native is None:
        renderer = ResponsesRenderer(head)
        ctx = RequestContext(kind="chat", body=chat_body(wanted, [*history, *items]), render=renderer, **common)
    else:
        renderer = NativeRenderer(head)
        body = responses_body(wanted, [*history, *items], native)
        ctx = ResponsesContext(kind="responses", body=body, render=renderer, requires=native.requires, **common)
    return _Created(ctx, renderer, wanted.store, items, history, principal.tenant, wanted.stream)


async def _mcp_answer(created: _Created) -> ASGIApp:
    """A run with mcp tools: to its end before the answer (unary), or as it goes (a stream)."""
    mcp_run = created.renderer
    assert isinstance(mcp_run, McpRun)
    request_id = (b"x-request-id", mcp_run.head.response_id.removeprefix("resp_").encode())
    if created.stream:
        events = created.renderer = McpEvents(mcp_run)
        chunks = events.stream()
        first = await anext(chunks)  # raises what fails before the first model answer: an HTTP error, not an event
        return StreamAnswer(_after(first, chunks), [*_SSE_HEADERS, request_id])
    final = await mcp_run.unary()
    return JsonAnswer(_encode(final), [(b"content-type", JSON.encode()), request_id])


async def _save(gateway: Gateway, created: _Created) -> None:
    """Store the finished response; a store that fails costs the client its continuation, never the answer."""
    record = created.record()
    if record is None:
        return
    try:
        await gateway.responses.put(record)
    except GatewayError as exc:  # the answer is already paid for: it goes out whatever the store did
        log.warning("response %s was not stored: %s", record.id, type(exc).__name__)


async def _after(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


class _StoredBeforeEnd:
    """A stream's answer that stores the response before its closing events are sent."""

    def __init__(
        self, answer: ASGIApp, save: Callable[[], Awaitable[None]], renderer: ResponsesRenderer | NativeRenderer | McpRun | McpEvents
    ) -> None:
        self._answer = answer
        self._save = save
        self._renderer = renderer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        saved = False

        async def relay(message: Message) -> None:
            nonlocal saved
            # The renderer finishes the response while rendering the stream's last bytes, before they are sent.
            if not saved and self._renderer.final is not None:
                saved = True
                await self._save()
            await send(message)

        await self._answer(scope, receive, relay)


async def _stored(request: Request[Any, Any, Any], response_id: str) -> StoredResponse:
    gateway = _gateway(request)
    principal = await _principal(request, gateway)
    found = await gateway.responses.get(principal.tenant, response_id)
    if found is None:
        raise _not_found(response_id)
    return found


def _not_found(response_id: str) -> NotFound:
    # Another tenant's response is as unknown as one that never was.
    return NotFound(f"Response with id '{response_id[:128]}' not found.", param="response_id")


@get("/v1/responses/{response_id:str}")
async def retrieve_response(request: Request[Any, Any, Any], response_id: str) -> Response[bytes]:
    found = await _stored(request, response_id)
    return Response(found.response, media_type=JSON)


@delete("/v1/responses/{response_id:str}", status_code=200)
async def delete_response(request: Request[Any, Any, Any], response_id: str) -> Response[bytes]:
    gateway = _gateway(request)
    principal = await _principal(request, gateway)
    if not await gateway.responses.delete(principal.tenant, response_id):
        raise _not_found(response_id)
    return Response(_encode({"id": response_id, "object": "response", "deleted": True}), media_type=JSON)


@get("/v1/responses/{response_id:str}/input_items")
async def list_input_items(request: Request[Any, Any, Any], response_id: str) -> Response[bytes]:
    """The request's input items, newest first unless ``order=asc``; ``after`` and ``limit`` page through them."""
    params = request.query_params
    order, after, limit = params.get("order", "desc"), params.get("after"), params.get("limit", "20")
    if order not in ("asc", "desc"):
        raise InvalidRequest("`order` must be `asc` or `desc`.", param="order")
    if not limit.isdigit() or not 1 <= int(limit) <= _MAX_LISTED:
        raise InvalidRequest(f"`limit` must be an integer from 1 to {_MAX_LISTED}.", param="limit")
    found = await _stored(request, response_id)
    items = _items(found.input_items)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequest("`after` names no input item of this response.", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[: int(limit)]
    body = {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > len(page),
    }
    return Response(_encode(body), media_type=JSON)


ROUTES = [create_response, retrieve_response, delete_response, list_input_items]
