"""The Litestar application factory."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import time
from typing import Any

from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException

from core.config import Config, ConfigError
from core.config_check import load_config
from core.errors import (
    HTTP_STATUS_ERRORS,
    GatewayError,
    InternalError,
    NotFound,
    error_body,
)
from router import (
    access_log,
    routes_admin,
    routes_anthropic,
    routes_batches,
    routes_config,
    routes_files,
    routes_finops,
    routes_moderations,
    routes_openai,
    routes_ops,
    routes_plugins,
    routes_responses,
    ui,
)
from router.defaults import embedded_config
from router.fast_routes import GatewayApp
from router.gateway import Gateway
from router.logs import capture_process_errors, loop_exception_handler
from router.openapi import openapi_config
from router.ui.session_secret import SESSIONS_STATE, open_sessions

log = logging.getLogger("sluicegate")

CONFIG_ENV = "SLUICEGATE_CONFIG"
_VERSION = importlib.metadata.version("sluicegate")


class StartupFailed(RuntimeError):
    """The gateway did not start or stop: what the ASGI server prints instead of the cause, whose message may quote anything."""


def _error_response(exc: GatewayError) -> Response[bytes]:
    return Response(error_body(exc), status_code=exc.status, media_type="application/json", headers=exc.headers())


def _on_gateway_error(_: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
    return _error_response(exc)


def _on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    if request.url.path.startswith(routes_anthropic.PATH_PREFIX):
        # Routing errors (405, 404 under the prefix) answer in the surface's own shape.
        return routes_anthropic.on_http_error(request, exc)
    cls = HTTP_STATUS_ERRORS.get(exc.status_code)
    if cls is None:
        error = GatewayError(str(exc.detail))
        error.status = exc.status_code
        error.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        error.code = None
        return _error_response(error)
    if cls is NotFound:
        # The path is not echoed: a client may have put a key in it.
        return _error_response(NotFound(f"Unknown request URL: no {request.method} route has this path."))
    return _error_response(cls(str(exc.detail)))


def _on_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    # The type is logged for operators; the client gets no internals.
    log.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
    return _error_response(InternalError("The gateway failed to process the request."))


def _phase_failed(phase: str, exc: Exception) -> StartupFailed:
    """Log why the gateway failed to start or stop, by type and stack; what to raise in its place."""
    if isinstance(exc, ConfigError):
        # Written for operators, naming a key or a file, never a secret's value.
        log.critical("the gateway failed to %s: %s", phase, exc)
    else:
        log.critical("the gateway failed to %s: %s", phase, type(exc).__name__, exc_info=exc)
    return StartupFailed(f"the gateway failed to {phase} ({type(exc).__name__}): see the line before")


def create_app(config: Config, gateway: Gateway | None = None, source_path: str | None = None) -> Litestar:
    gw = gateway if gateway is not None else Gateway(config, source_path=source_path)
    access = gw.base.server.access_log
    # The console's sessions: made now, so that a bad `auth.console_secret` stops the start.
    console_sessions = open_sessions(gw.base)

    async def startup(app: Litestar) -> None:
        app.state.gateway = gw
        app.state[SESSIONS_STATE] = console_sessions
        app.state.started_at = int(time.time())
        asyncio.get_running_loop().set_exception_handler(loop_exception_handler)
        try:
            await gw.start()
        except Exception as exc:  # noqa: BLE001 - re-raised as StartupFailed, logged by type and stack
            raise _phase_failed("start", exc) from None

    async def shutdown(app: Litestar) -> None:
        await console_sessions.aclose()
        try:
            await gw.stop()
        except Exception as exc:  # noqa: BLE001 - re-raised as StartupFailed, logged by type and stack
            raise _phase_failed("stop", exc) from None

    return GatewayApp(
        gateway=gw,
        access_log=access,
        route_handlers=[
            *routes_openai.ROUTES,
            *routes_ops.ROUTES,
            *routes_admin.ROUTES,
            *routes_config.ROUTES,
            *routes_finops.ROUTES,
            *routes_responses.ROUTES,
            *routes_files.ROUTES,
            *routes_batches.ROUTES,
            *routes_anthropic.ROUTES,
            *routes_moderations.ROUTES,
            *ui.ROUTES,
            *routes_plugins.mounts(lambda: gw.snapshot),
        ],
        on_startup=[startup],
        on_shutdown=[shutdown],
        exception_handlers={
            GatewayError: _on_gateway_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
        # The access log's line of a request refused outside the pipeline (a wrong key, a bad body, no such URL).
        before_request=access_log.before_request if access else None,
        after_exception=[access_log.after_exception] if access else [],
        request_max_body_size=config.server.max_body_bytes,
        openapi_config=openapi_config(_VERSION),
        # Logging is the server's (router.logs): structured, one JSON object a line.
        logging_config=None,
        debug=False,
    )


def app_from_env() -> Litestar:
    """Factory for uvicorn workers: the config path travels in an environment variable."""
    capture_process_errors()
    path = os.environ.get(CONFIG_ENV)
    try:
        config = load_config(path) if path else embedded_config()
        return create_app(config, source_path=path)
    except ConfigError as exc:
        log.critical("the gateway failed to start: %s", exc)
        raise SystemExit(2) from None
    except Exception as exc:
        # uvicorn would let Python print it, message and all.
        log.critical("the gateway failed to start: %s", type(exc).__name__, exc_info=exc)
        raise SystemExit(1) from None
