"""The OpenAI inference routes served straight from the ASGI call, past the framework's router.

``GatewayApp`` is the Litestar application with one difference: a ``POST`` to
``/v1/chat/completions``, ``/v1/completions`` or ``/v1/embeddings`` goes
directly to ``routes_openai.serve_openai``. Litestar's routing, its handler
plumbing (the ``Request`` object, parameter resolution, the response
conversion) and its exception middleware cost more per request than the
gateway's own admission; the inference routes use none of what they offer.
The same routes stay registered with Litestar (for the OpenAPI document, and
for a mount under a ``root_path``), and what Litestar would have done around
them is done here the same way:

- the access log's cell for the request (``access_log.begin``), and its line
  for a request refused before the pipeline (``access_log.after_exception``);
- a ``GatewayError`` answered in the OpenAI error shape with its status and
  headers (``Retry-After``), anything else logged by type and answered 500;
- the client's headers, by lower-case name (ASGI's), the last of repeated ones.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Litestar
from litestar.types import Receive, Scope, Send

from core.errors import GatewayError, InternalError, error_body
from router import access_log
from router.answers import JsonAnswer
from router.gateway import Gateway
from router.routes_openai import FAST, serve_openai

log = logging.getLogger("sluicegate")


class GatewayApp(Litestar):
    """Litestar, with the inference routes served first (see the module's docstring)."""

    __slots__ = ("fast_access", "fast_gateway")

    def __init__(self, *args: Any, gateway: Gateway, access_log: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast_gateway = gateway
        self.fast_access = access_log

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            route = FAST.get(scope["path"])
            if route is not None:
                await self._serve_fast(route, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _serve_fast(self, route: Any, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = scope["litestar_app"] = self
        scope["path_template"] = scope["path"]
        access = self.fast_access
        if access:
            access_log.begin(scope)
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        kind, name, shape = route
        try:
            answer = await serve_openai(self.fast_gateway, headers, receive, kind, name, shape)
        except GatewayError as exc:
            if access:
                await access_log.after_exception(exc, scope)
            answer = error_answer(exc)
        except Exception as exc:  # noqa: BLE001 - answered 500, logged by type (its message may quote the request)
            log.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
            if access:
                await access_log.after_exception(exc, scope)
            answer = error_answer(InternalError("The gateway failed to process the request."))
        await answer(scope, receive, send)


def error_answer(exc: GatewayError) -> JsonAnswer:
    """``exc`` in the OpenAI error shape, as ``router.app``'s exception handler answers it."""
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers().items()]
    return JsonAnswer(error_body(exc), headers, exc.status)
