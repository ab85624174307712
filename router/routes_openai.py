"""The OpenAI surface. Handlers are thin: authenticate, decode, call the pipeline, encode."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.types import ASGIApp, Receive

from core.errors import GatewayError, PermissionDenied
from policies.routing import model_not_found
from router.body import read_asgi_body
from router.decode import decode_body
from router.gateway import Gateway
from router.openapi import BODY
from router.pipeline import RequestContext
from router.serve import run
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
    return await serve_openai(_gateway(request), request.headers, request.receive, kind, route, shape)


async def serve_openai(
    gateway: Gateway, headers: Mapping[str, str], receive: Receive, kind: Kind, route: str, shape: type[WireRequest]
) -> Answer:
    """Authenticate, decode, run the pipeline; ``headers`` has the client's headers by lower-case name."""
    started = time.perf_counter()
    try:
        ctx = await _admit(headers, receive, gateway, kind, route, shape, started)
    except GatewayError as exc:
        # Refused before routing: the alias may be anything the client typed.
        gateway.metrics.observe(route, "-", exc.status, time.perf_counter() - started)
        raise
    return await run(gateway, ctx, headers)


async def _admit(
    headers: Mapping[str, str],
    receive: Receive,
    gateway: Gateway,
    kind: Kind,
    route: str,
    shape: type[WireRequest],
    started: float,
) -> RequestContext:
    """Authenticate, decode and validate; the alias must exist before any work is done."""
    principal = await gateway.authenticate(headers.get("authorization"))
    authenticated = time.perf_counter()
    if principal.key_id.startswith("jwt:") and not principal.has_scope("inference"):
        raise PermissionDenied("This token lacks the `inference` scope the OpenAI endpoints need.")
    body = await read_asgi_body(headers, receive, gateway.base.server.max_body_bytes)
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
        authenticated=authenticated,
    )


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
    """The aliases the calling tenant may use: allowed by its policy, with a deployment the policy lets serve them."""
    gateway = _gateway(request)
    principal = await gateway.authenticate(request.headers.get("authorization"))
    snapshot = gateway.snapshot
    created = request.app.state.started_at
    aliases = snapshot.router.visible(snapshot.policies.routing(principal.tenant))
    data = [_model_entry(a.name, a.config.owned_by, created) for a in aliases]
    return Response(_encode({"object": "list", "data": data}), media_type=JSON)


@get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request[Any, Any, Any], model_id: str) -> Response[bytes]:
    gateway = _gateway(request)
    principal = await gateway.authenticate(request.headers.get("authorization"))
    snapshot = gateway.snapshot
    name = model_id.lstrip("/")
    visible = {a.name: a for a in snapshot.router.visible(snapshot.policies.routing(principal.tenant))}
    alias = visible.get(name)
    if alias is None:
        raise model_not_found(name)
    return Response(_encode(_model_entry(alias.name, alias.config.owned_by, request.app.state.started_at)), media_type=JSON)


ROUTES = [chat_completions, completions, embeddings, list_models, retrieve_model]

# What ``router.fast_routes`` serves without the framework's routing: path -> (kind, route, shape).
FAST: dict[str, tuple[Kind, str, type[WireRequest]]] = {
    "/v1/chat/completions": ("chat", "chat", ChatRequest),
    "/v1/completions": ("completion", "completions", CompletionRequest),
    "/v1/embeddings": ("embedding", "embeddings", EmbeddingRequest),
}
