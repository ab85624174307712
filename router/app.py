"""The Litestar application factory."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import time
from typing import Any

from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException

from core.config import Config
from core.config_check import load_config
from core.errors import (
    GatewayError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    error_body,
)
from router import (
    routes_admin,
    routes_anthropic,
    routes_batches,
    routes_config,
    routes_files,
    routes_finops,
    routes_openai,
    routes_ops,
    routes_plugins,
    routes_responses,
)
from router.defaults import embedded_config
from router.gateway import Gateway
from router.openapi import openapi_config

log = logging.getLogger("sluicegate")

CONFIG_ENV = "SLUICEGATE_CONFIG"
_VERSION = importlib.metadata.version("sluicegate")

_HTTP_ERRORS: dict[int, type[GatewayError]] = {
    400: InvalidRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


def _error_response(exc: GatewayError) -> Response[bytes]:
    return Response(error_body(exc), status_code=exc.status, media_type="application/json", headers=exc.headers())


def _on_gateway_error(_: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
    return _error_response(exc)


def _on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    if request.url.path.startswith(routes_anthropic.PATH_PREFIX):
        # Routing errors (405, 404 under the prefix) answer in the surface's own shape.
        return routes_anthropic.on_http_error(request, exc)
    cls = _HTTP_ERRORS.get(exc.status_code)
    if cls is None:
        error = GatewayError(str(exc.detail))
        error.status = exc.status_code
        error.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        error.code = None
        return _error_response(error)
    if cls is NotFound:
        return _error_response(NotFound(f"Unknown request URL: {request.method} {request.url.path}."))
    return _error_response(cls(str(exc.detail)))


def _on_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    # The type is logged for operators; the client gets no internals.
    log.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
    return _error_response(InternalError("The gateway failed to process the request."))


def create_app(config: Config, gateway: Gateway | None = None, source_path: str | None = None) -> Litestar:
    gw = gateway if gateway is not None else Gateway(config, source_path=source_path)

    async def startup(app: Litestar) -> None:
        app.state.gateway = gw
        app.state.started_at = int(time.time())
        await gw.start()

    async def shutdown(app: Litestar) -> None:
        await gw.stop()

    return Litestar(
        route_handlers=[*routes_openai.ROUTES, *routes_ops.ROUTES, *routes_admin.ROUTES, *routes_config.ROUTES, *routes_finops.ROUTES,
                        *routes_responses.ROUTES, *routes_files.ROUTES, *routes_batches.ROUTES, *routes_anthropic.ROUTES,
                        *routes_plugins.mounts(lambda: gw.snapshot)],
        on_startup=[startup],
        on_shutdown=[shutdown],
        exception_handlers={
            GatewayError: _on_gateway_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
        request_max_body_size=config.server.max_body_bytes,
        openapi_config=openapi_config(_VERSION),
        # Logging is the server's (router.logs): structured, one JSON object a line.
        logging_config=None,
        debug=False,
    )


def app_from_env() -> Litestar:
    """Factory for uvicorn workers: the config path travels in an environment variable."""
    path = os.environ.get(CONFIG_ENV)
    config = load_config(path) if path else embedded_config()
    return create_app(config, source_path=path)
