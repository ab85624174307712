"""The OpenAI surface. Handlers are thin: authenticate, decode, call the pipeline, encode."""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.response import Stream

from router.decode import decode_body
from router.errors import GatewayError, PayloadTooLarge, PermissionDenied
from router.gateway import Gateway
from router.pipeline import RequestContext
from router.wire import ChatRequest, CompletionRequest, EmbeddingRequest, Request as WireRequest
from serving.base import Kind

JSON = "application/json"
_encode = msgspec.json.encode


def new_request_id() -> str:
    return os.urandom(12).hex()


def _gateway(request: Request[Any, Any, Any]) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _read_body(request: Request[Any, Any, Any], limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
    body = await request.body()
    if len(body) > limit:
        raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
    return body


async def _serve(request: Request[Any, Any, Any], kind: Kind, route: str, shape: type[WireRequest]) -> Response[bytes] | Stream:
    gateway = _gateway(request)
    started = time.perf_counter()
    try:
        ctx = await _admit(request, gateway, kind, route, shape, started)
    except GatewayError as exc:
        # Refused before routing: the alias may be anything the client typed.
        gateway.metrics.observe(route, "-", exc.status, time.perf_counter() - started)
        raise
    pipeline = gateway.pipeline
    pipeline.begin(ctx, request.headers.get("traceparent"))
    try:
        await pipeline.admit(ctx)
        if ctx.stream:
            relay = await pipeline.open_stream(ctx)
            return Stream(relay, media_type="text/event-stream", headers=_headers(ctx, streaming=True))
        completion = await pipeline.unary(ctx)
    except GatewayError as exc:
        await pipeline.fail(ctx, exc)
        raise
    await pipeline.complete(ctx)
    return Response(completion.body, media_type=JSON, headers=_headers(ctx, streaming=False))


async def _admit(
    request: Request[Any, Any, Any], gateway: Gateway, kind: Kind, route: str, shape: type[WireRequest], started: float
) -> RequestContext:
    """Authenticate, decode and validate; the alias must exist before any work is done."""
    principal = await gateway.authenticate(request.headers.get("authorization"))
    if principal.key_id.startswith("jwt:") and not principal.has_scope("inference"):
        raise PermissionDenied("This token lacks the `inference` scope the OpenAI endpoints need.")
    body = await _read_body(request, gateway.config.server.max_body_bytes)
    raw, validated, unknown = decode_body(body, shape)
    if unknown:
        gateway.metrics.unknown_fields.labels(route).inc(unknown)
    gateway.router.get(validated.model)
    options = getattr(validated, "stream_options", None)
    return RequestContext(
        request_id=new_request_id(),
        principal=principal,
        kind=kind,
        route=route,
        alias=validated.model,
        body=raw,
        stream=bool(getattr(validated, "stream", False)),
        include_usage=bool(options is not None and options.include_usage),
        session_id=request.headers.get("x-session-id"),
        started=started,
    )


def _headers(ctx: RequestContext, *, streaming: bool) -> dict[str, str]:
    headers = {"x-request-id": ctx.request_id, "x-sluicegate-deployment": ctx.deployment}
    if ctx.route_reason:
        headers["x-sluicegate-route-reason"] = ctx.route_reason
    if streaming:
        headers["cache-control"] = "no-cache"
        headers["x-accel-buffering"] = "no"
    return headers


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    return await _serve(request, "chat", "chat", ChatRequest)


@post("/v1/completions", status_code=200)
async def completions(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    return await _serve(request, "completion", "completions", CompletionRequest)


@post("/v1/embeddings", status_code=200)
async def embeddings(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    return await _serve(request, "embedding", "embeddings", EmbeddingRequest)


def _model_entry(alias: str, owned_by: str, created: int) -> dict[str, Any]:
    return {"id": alias, "object": "model", "created": created, "owned_by": owned_by}


@get("/v1/models")
async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
    gateway = _gateway(request)
    await gateway.authenticate(request.headers.get("authorization"))
    created = request.app.state.started_at
    data = [_model_entry(a.name, a.config.owned_by, created) for a in gateway.router.aliases()]
    return Response(_encode({"object": "list", "data": data}), media_type=JSON)


@get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request[Any, Any, Any], model_id: str) -> Response[bytes]:
    gateway = _gateway(request)
    await gateway.authenticate(request.headers.get("authorization"))
    alias = gateway.router.get(model_id.lstrip("/"))
    return Response(_encode(_model_entry(alias.name, alias.config.owned_by, request.app.state.started_at)), media_type=JSON)


ROUTES = [chat_completions, completions, embeddings, list_models, retrieve_model]
