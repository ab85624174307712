"""Tenants and their keys: list, create, edit limits and budgets, keys with a one-time reveal, rotate, revoke.

Each write is the admin API's operation (``router.routes_admin``) for the
signed-in caller, with the API's input types and checks; a refused form comes
back with the API's message next to the field it names. A tenant's guardrails
and MCP tool grants live in the live config, not the tenant store: operators
edit them in a form of their own on the tenant's page, which writes a new
config version (``router.ui.live_policy``) as the policy page does.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post

from core.config_version import VersionConflict
from core.errors import GatewayError
from router.routes_admin import (
    add_tenant,
    audit_entries,
    change_tenant,
    drop_key,
    mint_key,
    read_tenant,
    tenant_keys,
    visible_tenants,
)
from router.routes_config import current_version, replace_config
from router.tenant_records import ApiKey, CreatedKey, KeyCreate, TenantCreate, TenantUpdate
from router.ui.console import Console, show, write
from router.ui.data import alerts_of, budget_states
from router.ui.forms import FieldError, convert, nested
from router.ui.live_policy import conflict, field_of, live_view, new_entry, parse_grants, parse_guardrails, tenant_entry, version_number
from router.ui.render import page, redirect

SCOPE_CHOICES = ("tenant:read", "tenant:write", "ops:read", "ops:write", "ops:*")
BUDGET_ROWS_FREE = 1  # blank budget rows offered under the existing ones
_BUDGET_FLAGS = tuple(f"budgets[{i}].hard" for i in range(10))


def _form_values(console: Console) -> dict[str, Any]:
    return {name: console.form.getall(name) for name in console.form if name != "csrf"}


def _budget_rows(data: dict[str, Any]) -> dict[str, Any]:
    """Budget rows left without a limit are no budget; the others keep their checkbox's value."""
    rows = data.get("budgets")
    if isinstance(rows, list):
        data["budgets"] = [row for row in rows if isinstance(row, dict) and "limit" in row]
    return data


def _tenant_form(console: Console, *, update: bool) -> dict[str, Any]:
    form = console.form
    flags = tuple(f for f in _BUDGET_FLAGS if form.get(f.replace(".hard", ".limit")))
    data = nested(form, lists=("alert_at",), flags=(*flags, "disabled") if console.caller.ops else flags)
    data = _budget_rows(data)
    if update and console.caller.ops:
        # Cleared fields clear the value: no limits, no budgets.
        data.setdefault("budgets", [])
        data.setdefault("limits", {})
    if update and not console.caller.ops:
        # A tenant admin may rename its tenant and nothing else: the form holds only the name.
        data = {k: v for k, v in data.items() if k == "name"}
    return data


@get("/ui/tenants", include_in_schema=False)
async def tenants(request: Request[Any, Any, Any]) -> Response[bytes]:
    async def render(console: Console) -> Response[bytes]:
        if not console.caller.ops:
            return redirect(f"/ui/tenants/{console.caller.principal.tenant}")
        return await _list(console, {}, {}, 200)

    return await show(request, render)


async def _list(console: Console, errors: dict[str, str], values: dict[str, Any], status: int) -> Response[bytes]:
    rows = await visible_tenants(console.caller, console.store)
    return page("tenants.html", status=status, **console.ctx(tenants=rows, errors=errors, values=values))


@post("/ui/tenants", status_code=200, include_in_schema=False)
async def create_tenant(request: Request[Any, Any, Any]) -> Response[bytes]:
    async def run(console: Console) -> Response[bytes]:
        console.require_ops()
        try:
            spec = convert(_tenant_form(console, update=False), TenantCreate)
            created = await add_tenant(console.caller, console.store, spec)
        except FieldError as exc:
            return await _list(console, exc.as_dict(), _form_values(console), exc.status)
        except GatewayError as exc:
            if exc.status >= 500:
                raise
            return await _list(console, FieldError.of(exc).as_dict(), _form_values(console), exc.status)
        return redirect(f"/ui/tenants/{created.id}")

    return await write(request, run)


async def _detail(
    console: Console,
    tenant_id: str,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    status: int = 200,
    created: CreatedKey | None = None,
) -> Response[bytes]:
    tenant = await read_tenant(console.caller, console.store, tenant_id)
    keys: list[ApiKey] = await tenant_keys(console.caller, console.store, tenant_id)
    states = await budget_states(console.gateway, tenant.id, list(tenant.budgets))
    alerts = alerts_of(await audit_entries(console.caller, console.store, tenant.id, 1000))
    # Guardrails and MCP grants are the live config's (operators only): read from the version serving here.
    live = await live_view(console, tenant) if console.caller.ops else None
    ctx = console.ctx(
        tenant=tenant, keys=keys, budgets=states, alerts=alerts[:50], errors=errors or {}, values=values or {},
        created=created, scope_choices=SCOPE_CHOICES, free_rows=BUDGET_ROWS_FREE, live=live,
    )  # fmt: skip
    headers = {"cache-control": "no-store"}
    return page("tenant.html", status=status, headers=headers, **ctx)


@get("/ui/tenants/{tenant_id:str}", include_in_schema=False)
async def tenant_page(request: Request[Any, Any, Any], tenant_id: str) -> Response[bytes]:
    async def render(console: Console) -> Response[bytes]:
        return await _detail(console, tenant_id)

    return await show(request, render)


@post("/ui/tenants/{tenant_id:str}", status_code=200, include_in_schema=False)
async def update_tenant(request: Request[Any, Any, Any], tenant_id: str) -> Response[bytes]:
    async def run(console: Console) -> Response[bytes]:
        try:
            update = convert(_tenant_form(console, update=True), TenantUpdate)
            await change_tenant(console.caller, console.store, tenant_id, update)
        except FieldError as exc:
            return await _detail(console, tenant_id, errors=exc.as_dict(), values=_form_values(console), status=exc.status)
        except GatewayError as exc:
            if exc.status >= 500 or exc.status == 404:
                raise
            return await _detail(console, tenant_id, errors=FieldError.of(exc).as_dict(), values=_form_values(console), status=exc.status)
        return redirect(f"/ui/tenants/{tenant_id}")

    return await write(request, run)


@post("/ui/tenants/{tenant_id:str}/guardrails", status_code=200, include_in_schema=False)
async def update_guardrails(request: Request[Any, Any, Any], tenant_id: str) -> Response[bytes]:
    """The tenant's guardrails and MCP grants: a new config version, conditional on the one the form showed."""

    async def run(console: Console) -> Response[bytes]:
        console.require_ops()
        tenant = await read_tenant(console.caller, console.store, tenant_id)
        form = console.form
        expected = version_number(form.get("version"), "version")
        guardrails, grants = form.get("guardrails"), form.get("mcp_tools")
        try:
            entry_guardrails = parse_guardrails(guardrails if isinstance(guardrails, str) else "")
            entry_grants = parse_grants(grants if isinstance(grants, str) else "")
            document = msgspec.to_builtins((await current_version(console.gateway)).document)
            entry = tenant_entry(document, tenant.id)
            if entry is None:
                entry = new_entry(console, tenant)
                document.setdefault("tenants", []).append(entry)
            entry["guardrails"], entry["mcp_tools"] = entry_guardrails, entry_grants
            reason = f"tenant {tenant.id}: guardrails and MCP tools changed in the console"
            await replace_config(console.gateway, console.actor, document, expected=expected, reason=reason)
        except VersionConflict as exc:
            return await conflict(console, exc, expected)
        except FieldError as exc:
            return await _detail(console, tenant.id, errors=exc.as_dict(), values=_form_values(console), status=exc.status)
        except GatewayError as exc:
            if exc.status >= 500:
                raise
            errors = {field_of(exc.message): exc.message}
            return await _detail(console, tenant.id, errors=errors, values=_form_values(console), status=exc.status)
        return redirect(f"/ui/tenants/{tenant.id}#guardrails")

    return await write(request, run)


@post("/ui/tenants/{tenant_id:str}/keys", status_code=200, include_in_schema=False)
async def create_key(request: Request[Any, Any, Any], tenant_id: str) -> Response[bytes]:
    async def run(console: Console) -> Response[bytes]:
        data = nested(console.form)
        scopes = data.get("scopes", [])
        data["scopes"] = [scopes] if isinstance(scopes, str) else scopes
        if isinstance(data.get("expires_at"), str) and len(data["expires_at"]) == 16:
            data["expires_at"] += ":00Z"  # the form's local date and time are taken as UTC
        try:
            created = await mint_key(console.caller, console.store, tenant_id, convert(data, KeyCreate))
        except FieldError as exc:
            return await _detail(console, tenant_id, errors={"key." + k: v for k, v in exc.as_dict().items()}, status=exc.status)
        except GatewayError as exc:
            if exc.status >= 500 or exc.status == 404:
                raise
            errors = {"key." + k: v for k, v in FieldError.of(exc).as_dict().items()}
            return await _detail(console, tenant_id, errors=errors, status=exc.status)
        # The plaintext is in this one answer, never stored, never shown again.
        return await _detail(console, tenant_id, created=created, status=201)

    return await write(request, run)


@post("/ui/tenants/{tenant_id:str}/keys/{key_id:str}/revoke", status_code=200, include_in_schema=False)
async def revoke_key(request: Request[Any, Any, Any], tenant_id: str, key_id: str) -> Response[bytes]:
    async def run(console: Console) -> Response[bytes]:
        await drop_key(console.caller, console.store, tenant_id, key_id)
        return redirect(f"/ui/tenants/{tenant_id}")

    return await write(request, run)


@post("/ui/tenants/{tenant_id:str}/keys/{key_id:str}/rotate", status_code=200, include_in_schema=False)
async def rotate_key(request: Request[Any, Any, Any], tenant_id: str, key_id: str) -> Response[bytes]:
    """A new key with the old one's scopes, limits, budgets and expiry; then the old one is revoked."""

    async def run(console: Console) -> Response[bytes]:
        old = next((k for k in await tenant_keys(console.caller, console.store, tenant_id) if k.id == key_id), None)
        if old is None or old.revoked:
            return await _detail(console, tenant_id, errors={"keys": f"No active key {key_id!r} to rotate."}, status=404)
        spec = KeyCreate(
            scopes=list(old.scopes), expires_at=old.expires_at, priority=old.priority, limits=old.limits, budgets=list(old.budgets)
        )
        created = await mint_key(console.caller, console.store, tenant_id, spec)
        await drop_key(console.caller, console.store, tenant_id, key_id)
        return await _detail(console, tenant_id, created=created, status=201)

    return await write(request, run)


ROUTES = [tenants, create_tenant, tenant_page, update_tenant, update_guardrails, create_key, revoke_key, rotate_key]
