"""FinOps queries over the ledger and the budgets, scoped by caller.

A tenant's key sees its own tenant only; an `ops:` scope sees every tenant
and may filter with `tenant=`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import msgspec
from litestar import Request, Response, get

from budgets.accounting import PICO_PER_MICRO, budget_key
from budgets.ledger_query import UsageQuery, UsageRow
from budgets.prices import usd
from budgets.report import ReportError, as_dicts, build_query
from core.config import BudgetConfig
from core.errors import InvalidRequest, NotFound, Overloaded
from core.principal import Principal
from router.gateway import Gateway

JSON = "application/json"


def _scope(principal: Principal, requested: str | None) -> str | None:
    if principal.has_scope("ops:read"):
        return requested
    if requested is not None and requested != principal.tenant:
        # Other tenants' existence is not revealed.
        raise NotFound(f"Unknown tenant `{requested[:64]}`.", param="tenant")
    return principal.tenant


@get("/v1/ledger/usage")
async def ledger_usage(request: Request[Any, Any, Any]) -> Response[bytes]:
    gateway: Gateway = request.app.state.gateway
    principal = await gateway.authenticate(request.headers.get("authorization"))
    params = request.query_params
    tenant = _scope(principal, params.get("tenant"))
    query, rows = await usage_report(gateway, params.get("from"), params.get("to"), params.get("group_by"), tenant)
    body = {
        "object": "list",
        "from": query.start.isoformat(),
        "to": query.end.isoformat(),
        "group_by": query.group_by,
        "data": as_dicts(rows),
    }
    return Response(msgspec.json.encode(body), media_type=JSON)


async def usage_report(
    gateway: Gateway, start: str | None, end: str | None, group_by: str | None, tenant: str | None
) -> tuple[UsageQuery, list[UsageRow]]:
    """Ledger totals for ``tenant`` (None: every tenant) grouped by ``group_by``; the API's errors for bad input.

    What ``GET /v1/ledger/usage`` and the console's pages read.
    """
    try:
        query = build_query(start, end, group_by, tenant)
    except ReportError as exc:
        raise InvalidRequest(str(exc), param=exc.param) from None
    if gateway.ledger is None:
        raise NotFound("The ledger is turned off on this gateway (state.ledger: off).")
    try:
        rows = await gateway.ledger.usage(query)
    except Exception:
        raise Overloaded("The ledger cannot be queried right now; retry shortly.", retry_after=1.0) from None
    return query, rows


async def budget_lines(gateway: Gateway, scope: str, budgets: list[BudgetConfig], now: datetime) -> list[dict[str, Any]]:
    out = []
    for budget in budgets:
        key, _ = budget_key(scope, budget, now)
        spent, reserved = await gateway.counters.budget_state(key)
        limit = budget.limit * (PICO_PER_MICRO if budget.kind == "money" else 1)
        line: dict[str, Any] = {
            "scope": scope,
            "kind": budget.kind,
            "period": budget.period,
            "hard": budget.hard,
            "limit": limit,
            "spent": spent,
            "reserved": reserved,
            "remaining": max(0, limit - spent - reserved),
        }
        if budget.kind == "money":
            line.update(unit="pico_usd", limit_usd=usd(limit), spent_usd=usd(spent), remaining_usd=usd(line["remaining"]))
        else:
            line["unit"] = "tokens"
        out.append(line)
    return out


@get("/v1/ledger/budgets")
async def budgets_remaining(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The caller's budgets (tenant and key) with spent, reserved and remaining amounts."""
    gateway: Gateway = request.app.state.gateway
    principal = await gateway.authenticate(request.headers.get("authorization"))
    now = datetime.now(timezone.utc)
    requested = _scope(principal, request.query_params.get("tenant"))
    if requested is not None and requested != principal.tenant:
        tenant = await gateway.tenants.get_tenant(requested)
        lines = await budget_lines(gateway, f"t:{tenant.id}", list(tenant.budgets), now)
    else:
        lines = await budget_lines(gateway, f"t:{principal.tenant}", list(principal.tenant_budgets), now)
        lines += await budget_lines(gateway, f"k:{principal.tenant}:{principal.key_id}", list(principal.key_budgets), now)
    return Response(msgspec.json.encode({"object": "list", "data": lines}), media_type=JSON)


ROUTES = [ledger_usage, budgets_remaining]
