"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get

from router.gateway import Gateway

JSON = "application/json"


@get("/healthz", sync_to_thread=False)
def healthz() -> Response[bytes]:
    return Response(b'{"status":"ok"}', media_type=JSON)


@get("/readyz")
async def readyz(request: Request[Any, Any, Any]) -> Response[bytes]:
    gateway: Gateway = request.app.state.gateway
    checks = await gateway.readiness()
    ready = all(checks.values())
    body = {"status": "ready" if ready else "not_ready", "checks": checks, "deployments": await gateway.deployment_health()}
    return Response(msgspec.json.encode(body), media_type=JSON, status_code=200 if ready else 503)


@get("/metrics", sync_to_thread=False)
def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text, or OpenMetrics (with trace-id exemplars) when the scraper's Accept asks for it."""
    gateway: Gateway = request.app.state.gateway
    gateway.billing.afterwards.run_all()  # the answered requests' spend, counted before it is read
    body, content_type = gateway.metrics.exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)


ROUTES = [healthz, readyz, metrics]
