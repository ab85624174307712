"""``POST /v1/moderations``: OpenAI's moderation endpoint, served by a moderation deployment behind an alias.

``model`` names an alias, as on every other ``/v1`` route; the tenant must be
allowed to call it. The alias's first deployment is asked (``{base_url}/moderations``,
with its own key and model name): configure an alias whose deployment speaks
``/v1/moderations`` (OpenAI's own, or a self-hosted classifier's), the same
deployment a ``kind: moderation`` guardrail names. The answer is OpenAI's shape
with the alias as ``model``. Upstream failures map to the usual gateway errors
(502/503/504; 504 past the deployment's ``timeouts.read_s``). A moderation call is not metered: no tokens, no budget, no
ledger row (OpenAI does not charge for it); it is counted in the request metrics.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import msgspec
from litestar import Request, post

from core.errors import GatewayError, InvalidRequest, PermissionDenied, UpstreamTimeout
from policies.guardrails_moderation import moderation_body
from router.answers import JsonAnswer
from router.body import read_body
from router.gateway import Gateway
from router.openapi import BODY
from router.routes_openai import Answer, new_request_id

_ROUTE = "moderations"
_MAX_INPUTS = 2048


class ModerationRequest(msgspec.Struct, forbid_unknown_fields=True):
    input: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=_MAX_INPUTS)]
    model: Annotated[str, msgspec.Meta(min_length=1)] | None = None


@post("/v1/moderations", status_code=200, opt={BODY: ModerationRequest})
async def moderations(request: Request[Any, Any, Any]) -> Answer:
    gateway: Gateway = request.app.state.gateway
    started = time.perf_counter()
    alias = "-"
    try:
        principal = await gateway.authenticate(request.headers.get("authorization"))
        if principal.key_id.startswith("jwt:") and not principal.has_scope("inference"):
            raise PermissionDenied("This token lacks the `inference` scope the OpenAI endpoints need.")
        body = await read_body(request, gateway.base.server.max_body_bytes)
        try:
            wanted = msgspec.json.decode(body, type=ModerationRequest)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise InvalidRequest(f"Invalid moderation request: {exc}") from None
        if wanted.model is None:
            raise InvalidRequest("`model` is required: name an alias whose deployment serves /v1/moderations.", param="model")
        snapshot = gateway.reloader.current  # once: the request keeps it to its end
        found = snapshot.router.get(wanted.model, snapshot.policies.routing(principal.tenant))  # 404 for one the tenant may not call
        alias = found.name
        deployment = found.deployments[0]
        texts = [wanted.input] if isinstance(wanted.input, str) else wanted.input
        moderator = gateway.guardrails.moderator(snapshot, deployment.name)
        try:
            async with asyncio.timeout(deployment.config.timeouts.read_s):
                results = await moderator.classify(texts)
        except TimeoutError:
            raise UpstreamTimeout(f"deployment {deployment.name} did not answer the moderation request in time") from None
    except GatewayError as exc:
        gateway.metrics.observe(_ROUTE, alias, exc.status, time.perf_counter() - started)
        raise
    request_id = new_request_id()
    answer = msgspec.json.encode(moderation_body(results, model=alias, request_id=request_id))
    gateway.metrics.observe(_ROUTE, alias, 200, time.perf_counter() - started)
    return JsonAnswer(answer, [(b"x-request-id", request_id.encode()), (b"content-type", b"application/json")])


ROUTES = [moderations]
