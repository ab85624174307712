"""Config history with a diff view and rollback, a tenant's live policy (PII action, privacy class), the audit log.

Writes go through the admin API's operations (``router.routes_config``): each
is a new version, conditional on the version the form was rendered from, so
an edit made stale by another writer shows the conflict and what changed
instead of overwriting it.
"""

from __future__ import annotations

from typing import Any, get_args

import msgspec
from litestar import Request, Response, get, post

from core.config import RoutingPolicy
from core.config_version import VersionConflict
from core.errors import GatewayError, InvalidRequest
from policies.pii import Action
from router.config_store import MAX_HISTORY_LIMIT
from router.routes_admin import audit_entries, read_tenant
from router.routes_config import current_version, replace_config, roll_back, version_diff
from router.ui.console import Console, show, write
from router.ui.live_policy import conflict, new_entry, tenant_entry, version_number
from router.ui.render import page, redirect

PII_ACTIONS: tuple[str, ...] = get_args(Action)
AUDIT_LIMIT = 1000


@get("/ui/config", include_in_schema=False)
async def history(request: Request[Any, Any, Any]) -> Response[bytes]:
    async def render(console: Console) -> Response[bytes]:
        console.require_ops()
        items = await console.gateway.reloader.store.history(MAX_HISTORY_LIMIT, None)
        return page("config.html", **console.ctx(history=items, current=console.gateway.snapshot.version))

    return await show(request, render)


@get("/ui/config/diff", include_in_schema=False)
async def diff_view(request: Request[Any, Any, Any]) -> Response[bytes]:
    async def render(console: Console) -> Response[bytes]:
        console.require_ops()
        params = request.query_params
        new = version_number(params.get("to") or str(console.gateway.snapshot.version), "to")
        old = version_number(params.get("from") or str(max(1, new - 1)), "from")
        changes = await version_diff(console.gateway, old, new)
        return page("diff.html", **console.ctx(diff=changes, current=console.gateway.snapshot.version))

    return await show(request, render)


@post("/ui/config/rollback", status_code=200, include_in_schema=False)
async def rollback(request: Request[Any, Any, Any]) -> Response[bytes]:
    async def run(console: Console) -> Response[bytes]:
        console.require_ops()
        target = version_number(console.form.get("version"), "version")
        expected = version_number(console.form.get("expected"), "expected")
        try:
            await roll_back(console.gateway, console.actor, target, expected=expected, reason="")
        except VersionConflict as exc:
            return await conflict(console, exc, expected)
        return redirect("/ui/config")

    return await write(request, run)


@get("/ui/tenants/{tenant_id:str}/policy", include_in_schema=False)
async def policy(request: Request[Any, Any, Any], tenant_id: str) -> Response[bytes]:
    async def render(console: Console) -> Response[bytes]:
        console.require_ops()
        return await _policy_page(console, tenant_id, {}, 200)

    return await show(request, render)


async def _policy_page(console: Console, tenant_id: str, errors: dict[str, str], status: int) -> Response[bytes]:
    tenant = await read_tenant(console.caller, console.store, tenant_id)
    version = await current_version(console.gateway)
    entry = tenant_entry(msgspec.to_builtins(version.document), tenant.id) or {}
    pii = entry.get("pii") or {}
    routing = entry.get("routing") or {}
    ctx = console.ctx(
        tenant=tenant, version=version.version, pii_action=pii.get("action", "off"), actions=PII_ACTIONS,
        self_hosted_only=bool(routing.get("self_hosted_only")), in_config=bool(entry), errors=errors,
    )  # fmt: skip
    return page("policy.html", status=status, **ctx)


@post("/ui/tenants/{tenant_id:str}/policy", status_code=200, include_in_schema=False)
async def save_policy(request: Request[Any, Any, Any], tenant_id: str) -> Response[bytes]:
    async def run(console: Console) -> Response[bytes]:
        console.require_ops()
        tenant = await read_tenant(console.caller, console.store, tenant_id)
        expected = version_number(console.form.get("version"), "version")
        action = console.form.get("pii_action")
        if action not in PII_ACTIONS:
            return await _policy_page(console, tenant.id, {"pii_action": f"Choose one of {', '.join(PII_ACTIONS)}."}, 400)
        document = msgspec.to_builtins((await current_version(console.gateway)).document)
        entry = tenant_entry(document, tenant.id)
        if entry is None:
            try:
                entry = new_entry(console, tenant)
            except InvalidRequest as exc:
                return await _policy_page(console, tenant.id, {"_form": exc.message}, exc.status)
            document.setdefault("tenants", []).append(entry)
        entry["pii"] = None if action == "off" and not entry.get("pii") else {**(entry.get("pii") or {}), "action": action}
        routing = entry.get("routing") or msgspec.to_builtins(RoutingPolicy())
        routing["self_hosted_only"] = "self_hosted_only" in console.form
        entry["routing"] = routing
        reason = f"tenant {tenant.id}: policy changed in the console"
        try:
            await replace_config(console.gateway, console.actor, document, expected=expected, reason=reason)
        except VersionConflict as exc:
            return await conflict(console, exc, expected)
        except GatewayError as exc:
            if exc.status >= 500:
                raise
            return await _policy_page(console, tenant.id, {"_form": exc.message}, exc.status)
        return redirect(f"/ui/tenants/{tenant.id}/policy")

    return await write(request, run)


@get("/ui/audit", include_in_schema=False)
async def audit(request: Request[Any, Any, Any]) -> Response[bytes]:
    async def render(console: Console) -> Response[bytes]:
        params = request.query_params
        tenant = params.get("tenant") or None
        action = (params.get("action") or "").strip()
        text = (params.get("q") or "").strip().lower()
        entries = await audit_entries(console.caller, console.store, tenant, AUDIT_LIMIT)
        if action:
            entries = [e for e in entries if e.action.startswith(action)]
        if text:
            entries = [e for e in entries if text in f"{e.actor} {e.action} {e.tenant or ''} {e.target}".lower()]
        ctx = console.ctx(entries=entries[:200], tenant=tenant or "", action=action, q=text, total=len(entries))
        return page("audit.html", **ctx)

    return await show(request, render)


ROUTES = [history, diff_view, rollback, policy, save_policy, audit]
