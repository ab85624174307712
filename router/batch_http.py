"""What the Files and Batches routes share: the caller, list pages, query parameters, JSON answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from litestar import Request, Response

from core.errors import InvalidRequest, PermissionDenied
from core.principal import Principal
from router.gateway import Gateway

JSON = "application/json"
_encode = msgspec.json.encode


async def caller(request: Request[Any, Any, Any]) -> tuple[Gateway, Principal]:
    """The gateway and the authenticated principal; a token needs the `inference` scope, as for the OpenAI endpoints."""
    gateway: Gateway = request.app.state.gateway
    principal = await gateway.authenticate(request.headers.get("authorization"))
    if principal.key_id.startswith("jwt:") and not principal.has_scope("inference"):
        raise PermissionDenied("This token lacks the `inference` scope the OpenAI endpoints need.")
    return gateway, principal


def json_answer(value: object, status: int = 200) -> Response[bytes]:
    return Response(_encode(value), status_code=status, media_type=JSON)


def page(items: Sequence[msgspec.Struct], ids: Sequence[str], has_more: bool) -> Response[bytes]:
    """An OpenAI cursor page: the SDK asks for the next one with ``after=<last_id>`` while ``has_more``."""
    body = {
        "object": "list",
        "data": list(items),
        "first_id": ids[0] if ids else None,
        "last_id": ids[-1] if ids else None,
        "has_more": has_more,
    }
    return json_answer(body)


def limit_param(request: Request[Any, Any, Any], default: int, most: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise InvalidRequest(f"`limit` must be an integer from 1 to {most}.", param="limit", code="invalid_value")
    return int(raw)
