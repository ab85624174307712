"""The OpenAI surface. Handlers are thin: authenticate, decode, call the pipeline, encode."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import Headers
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import ASGIApp

from core.errors import GatewayError, PermissionDenied
from router.body import read_body
from router.decode import decode_body
from router.gateway import Gateway
from router.openapi import BODY
from router.pipeline import RequestContext
from router.wire import ChatRequest, CompletionRequest, EmbeddingRequest
from router.wire import Request as WireRequest
from serving.base import Kind

JSON = "application/json"
_encode = msgspec.json.encode


# Request ids: 48 random bits per process, then a counter. Unique across replicas
# in practice, and no random-number syscall on the hot path (it is slow on VMs).
_ID_PREFIX = os.urandom(6).hex()
_id_counter = itertools.count()


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):012x}"


def _gateway(request: Request[Any, Any, Any]) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


# Handlers return ASGI responses directly, with headers already encoded: the
# hot path skips the framework's response conversion and header machinery.
# The annotation is ASGIApp so that Litestar passes them through untouched.
Answer = ASGIApp


async def _serve(request: Request[Any, Any, Any], kind: Kind, route: str, shape: type[WireRequest]) -> Answer:
    gateway = _gateway(request)
    started = time.perf_counter()
    headers = request.headers
    try:
        ctx = await _admit(request, headers, gateway, kind, route, shape, started)
    except GatewayError as exc:
        # Refused before routing: the alias may be anything the client typed.
        gateway.metrics.observe(route, "-", exc.status, time.perf_counter() - started)
        raise
    pipeline = gateway.pipeline
    pipeline.begin(ctx, headers.get("traceparent"))
    try:
        await pipeline.admit(ctx)
        if ctx.stream:
            relay = await pipeline.open_stream(ctx)
            return ASGIStreamingResponse(iterator=relay, encoded_headers=_headers(ctx, streaming=True), status_code=200)
        completion = await pipeline.unary(ctx)
    except GatewayError as exc:
        await pipeline.fail(ctx, exc)
        raise
    await pipeline.complete(ctx)
    return ASGIResponse(body=completion.body, encoded_headers=_headers(ctx, streaming=False), status_code=200)


async def _admit(
    request: Request[Any, Any, Any],
    headers: Headers,
    gateway: Gateway,
    kind: Kind,
    route: str,
    shape: type[WireRequest],
    started: float,
) -> RequestContext:
    """Authenticate, decode and validate; the alias must exist before any work is done."""
    principal = await gateway.authenticate(headers.get("authorization"))
    if principal.key_id.startswith("jwt:") and not principal.has_scope("inference"):
        raise PermissionDenied("This token lacks the `inference` scope the OpenAI endpoints need.")
    body = await read_body(request, gateway.base.server.max_body_bytes)
    raw, validated, unknown = decode_body(body, shape)
    if unknown:
        gateway.metrics.unknown_fields.labels(route).inc(unknown)
    snapshot = gateway.reloader.current  # once: the request keeps it to its end
    snapshot.router.get(validated.model)
    options = getattr(validated, "stream_options", None)
    return RequestContext(
        request_id=new_request_id(),
        snapshot=snapshot,
        principal=principal,
        kind=kind,
        route=route,
        alias=validated.model,
        body=raw,
        stream=bool(getattr(validated, "stream", False)),
        include_usage=bool(options is not None and options.include_usage),
        session_id=headers.get("x-session-id"),
        started=started,
    )


_JSON_TYPE = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


def _headers(ctx: RequestContext, *, streaming: bool) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"x-request-id", ctx.request_id.encode()),
        (b"x-sluicegate-deployment", ctx.deployment.encode()),
        (b"x-sluicegate-config-version", ctx.snapshot.header),
    ]
    if ctx.arm is not None:
        headers.append((b"x-sluicegate-canary", b"mirrored" if ctx.mirror else ctx.arm.encode()))
    if ctx.route_reason:
        headers.append((b"x-sluicegate-route-reason", ctx.route_reason.encode()))
    if streaming:
        headers += _SSE_HEADERS
    else:
        headers.append(_JSON_TYPE)
    return headers


@post("/v1/chat/completions", status_code=200, opt={BODY: ChatRequest})
async def chat_completions(request: Request[Any, Any, Any]) -> Answer:
    return await _serve(request, "chat", "chat", ChatRequest)


@post("/v1/completions", status_code=200, opt={BODY: CompletionRequest})
async def completions(request: Request[Any, Any, Any]) -> Answer:
    return await _serve(request, "completion", "completions", CompletionRequest)


@post("/v1/embeddings", status_code=200, opt={BODY: EmbeddingRequest})
async def embeddings(request: Request[Any, Any, Any]) -> Answer:
    return await _serve(request, "embedding", "embeddings", EmbeddingRequest)


def _model_entry(alias: str, owned_by: str, created: int) -> dict[str, Any]:
    return {"id": alias, "object": "model", "created": created, "owned_by": owned_by}


@get("/v1/models")
async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
    gateway = _gateway(request)
    await gateway.authenticate(request.headers.get("authorization"))
    created = request.app.state.started_at
    data = [_model_entry(a.name, a.config.owned_by, created) for a in gateway.snapshot.router.aliases()]
    return Response(_encode({"object": "list", "data": data}), media_type=JSON)


@get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request[Any, Any, Any], model_id: str) -> Response[bytes]:
    gateway = _gateway(request)
    await gateway.authenticate(request.headers.get("authorization"))
    alias = gateway.snapshot.router.get(model_id.lstrip("/"))
    return Response(_encode(_model_entry(alias.name, alias.config.owned_by, request.app.state.started_at)), media_type=JSON)


ROUTES = [chat_completions, completions, embeddings, list_models, retrieve_model]
