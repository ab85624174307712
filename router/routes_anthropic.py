"""The Anthropic Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

Messages is served by the same pipeline as chat (``router.serve.run``): the
request becomes a chat body (``router.anthropic_surface``) and the answer is
rendered back (``router.anthropic_surface_render``). count_tokens converts the
same way and counts the prompt as the pipeline would, with no upstream call
and no ledger row.

Errors on these routes are in Anthropic's shape (route-level handlers), so the
anthropic SDK raises its own exceptions; the rest of the app keeps OpenAI's.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, ExceptionHandlersMap

from budgets.tokens import counter_for, estimate_prompt_tokens
from core.errors import GatewayError, InternalError, PermissionDenied
from core.principal import Principal
from router.anthropic_surface import chat_body, count_body, error_json, error_status
from router.anthropic_surface_render import MessageHead, MessagesRenderer
from router.anthropic_wire import CountTokensRequest, MessagesRequest, decode_request
from router.body import read_body
from router.context import RequestContext
from router.gateway import Gateway
from router.openapi import BODY
from router.routes_openai import new_request_id
from router.serve import run

log = logging.getLogger("sluicegate.anthropic")
ROUTE = "messages"
COUNT_ROUTE = "messages_count_tokens"
JSON = "application/json"
_encode = msgspec.json.encode


def _gateway(request: Request[Any, Any, Any]) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _principal(request: Request[Any, Any, Any], gateway: Gateway) -> Principal:
    """Anthropic's clients send ``x-api-key``; OpenAI-style ``Authorization: Bearer`` works as well."""
    headers = request.headers
    key = headers.get("x-api-key")
    principal = await gateway.authenticate(f"Bearer {key}" if key else headers.get("authorization"))
    if principal.key_id.startswith("jwt:") and not principal.has_scope("inference"):
        raise PermissionDenied("This token lacks the `inference` scope the Messages endpoints need.")
    return principal


# --- errors in Anthropic's shape -------------------------------------------------------

PATH_PREFIX = "/v1/messages"


def _error_response(exc: GatewayError) -> Response[bytes]:
    return Response(error_json(exc), status_code=error_status(exc), media_type=JSON, headers=exc.headers())


def _on_gateway_error(_: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
    return _error_response(exc)


def on_http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    error = GatewayError(str(exc.detail))
    error.status = exc.status_code
    return _error_response(error)


def _on_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    # The type is logged for operators; the client gets no internals.
    log.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
    return _error_response(InternalError("The gateway failed to process the request."))


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    GatewayError: _on_gateway_error,
    HTTPException: on_http_error,
    Exception: _on_unexpected,
}


@post("/v1/messages", status_code=200, opt={BODY: MessagesRequest}, exception_handlers=EXCEPTION_HANDLERS)
async def create_message(request: Request[Any, Any, Any]) -> ASGIApp:
    gateway = _gateway(request)
    started = time.perf_counter()
    try:
        ctx = await _admit(request, gateway, started)
    except GatewayError as exc:
        # Refused before routing: the alias may be anything the client typed.
        gateway.metrics.observe(ROUTE, "-", exc.status, time.perf_counter() - started)
        raise
    return await run(gateway, ctx, request.headers)


async def _admit(request: Request[Any, Any, Any], gateway: Gateway, started: float) -> RequestContext:
    """Authenticate, decode and validate; the alias must exist before any work is done."""
    principal = await _principal(request, gateway)
    authenticated = time.perf_counter()
    wanted, unknown = decode_request(await read_body(request, gateway.base.server.max_body_bytes), MessagesRequest)
    if unknown:
        gateway.metrics.unknown_fields.labels(ROUTE).inc(unknown)
    snapshot = gateway.reloader.current  # once: the request keeps it to its end
    snapshot.router.get(wanted.model)
    request_id = new_request_id()
    head = MessageHead(f"msg_{request_id}", wanted.model, wanted.stop_sequences or [])
    return RequestContext(
        request_id=request_id,
        snapshot=snapshot,
        principal=principal,
        kind="chat",
        route=ROUTE,
        alias=wanted.model,
        body=chat_body(wanted),
        stream=wanted.stream,
        # message_delta carries usage: a stream asks for its usage chunk.
        include_usage=wanted.stream,
        session_id=request.headers.get("x-session-id"),
        render=MessagesRenderer(head),
        started=started,
        authenticated=authenticated,
    )


@post("/v1/messages/count_tokens", status_code=200, opt={BODY: CountTokensRequest}, exception_handlers=EXCEPTION_HANDLERS)
async def count_tokens(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The prompt's tokens with the tokenizer of the deployment that would serve it: no upstream call, no ledger row."""
    gateway = _gateway(request)
    started = time.perf_counter()
    model, status = "-", 500
    try:
        principal = await _principal(request, gateway)
        wanted, unknown = decode_request(await read_body(request, gateway.base.server.max_body_bytes), CountTokensRequest)
        if unknown:
            gateway.metrics.unknown_fields.labels(COUNT_ROUTE).inc(unknown)
        snapshot = gateway.reloader.current
        policy = snapshot.policies.routing(principal.tenant)
        alias = snapshot.router.get(wanted.model, policy)  # a 404 for an alias the tenant may not call
        model = alias.name
        # The deployment billing would count with: the first of the plan, or of the alias when none is healthy.
        planned = snapshot.router.plan(alias.name, policy=policy).deployments or alias.deployments
        counter = counter_for(planned[0].config.provider)
        tokens = await estimate_prompt_tokens("chat", count_body(wanted), counter)
        status = 200
    except GatewayError as exc:
        status = exc.status
        raise
    finally:
        gateway.metrics.observe(COUNT_ROUTE, model, status, time.perf_counter() - started)
    return Response(_encode({"input_tokens": tokens}), media_type=JSON)


ROUTES = [create_message, count_tokens]
