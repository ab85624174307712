"""Operators' pages on the serving side: models and deployments, and canaries.

Deployments are read from the snapshot this replica serves (health probe,
breaker state, running and waiting requests, recent p95); canary actions are
the admin API's (``router.routes_config.steer``), each a new config version.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post

from policies.canary import _ALLOWED_FROM
from router.routes_config import steer
from router.ui.console import Console, show, write
from router.ui.render import page, redirect

ACTIONS = ("promote", "pause", "resume", "abort")


@get("/ui/models", include_in_schema=False)
async def models(request: Request[Any, Any, Any]) -> Response[bytes]:
    async def render(console: Console) -> Response[bytes]:
        console.require_ops()
        gw = console.gateway
        snapshot = gw.snapshot
        health = await gw.deployment_health(wait_s=0.5)
        deployments = []
        for name, dep in snapshot.deployments.items():
            load = dep.engine.load()
            p95 = dep.latency.p95()
            deployments.append({
                "name": name, "provider": dep.config.provider, "model": dep.config.model, "privacy": dep.config.privacy,
                "up": health.get(name, False), "breaker": dep.breaker.state.value, "running": load.running,
                "waiting": load.waiting, "p95_ms": None if p95 is None else round(p95 * 1000),
            })  # fmt: skip
        aliases = []
        for alias in snapshot.router.aliases():
            queue = alias.queue
            aliases.append({
                "alias": alias.name, "deployments": [d.name for d in alias.deployments],
                "canary": alias.config.canary is not None, "in_use": queue.in_use if queue is not None else None,
                "queued": queue.waiting if queue is not None else None, "capacity": queue.capacity if queue is not None else None,
            })  # fmt: skip
        return page("models.html", **console.ctx(deployments=deployments, aliases=aliases, version=snapshot.version))

    return await show(request, render)


@get("/ui/canaries", include_in_schema=False)
async def canaries(request: Request[Any, Any, Any]) -> Response[bytes]:
    async def render(console: Console) -> Response[bytes]:
        console.require_ops()
        items = await console.gateway.canary_control.status()
        # Only the actions the canary's phase allows (the rule ``policies.canary.apply`` enforces).
        actions = {str(c["model"]): [a for a in ACTIONS if c["phase"] in _ALLOWED_FROM[a]] for c in items}
        return page("canaries.html", **console.ctx(canaries=items, actions=actions))

    return await show(request, render)


@post("/ui/canaries/{model:str}/{action:str}", status_code=200, include_in_schema=False)
async def steer_canary(request: Request[Any, Any, Any], model: str, action: str) -> Response[bytes]:
    async def run(console: Console) -> Response[bytes]:
        console.require_ops()
        reason = console.form.get("reason")
        await steer(console.gateway, console.actor, model, action, reason if isinstance(reason, str) else "")
        return redirect("/ui/canaries")

    return await write(request, run)


ROUTES = [models, canaries, steer_canary]
