"""The overview (operators) and a tenant's usage and spend, with charts and a CSV export.

Every figure is one aggregate ledger query (``router.ui.data.usage``); a
tenant admin's queries are always bound to their own tenant.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Request, Response, get

from budgets.report import ReportError, parse_time
from core.errors import InvalidRequest
from router.routes_admin import read_tenant
from router.ui import charts
from router.ui.console import Console, show
from router.ui.data import day_start, month_start, quantiles, regroup, totals, usage
from router.ui.render import SECURITY_HEADERS, page, redirect

CSV_COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd", "errors", "cache_hits", "saved_usd")
GROUPS = ("day", "model", "deployment", "key", "hour", "provider", "status")


def _bars(rows: list[dict[str, Any]], label: str, *, title: str) -> Any:
    items = sorted(((str(r[label]), float(r["cost_pico_usd"])) for r in rows), key=lambda kv: -kv[1])[:15]
    return charts.hbars(items, charts.usd, title=title)


@get("/ui", include_in_schema=False)
async def overview(request: Request[Any, Any, Any]) -> Response[bytes]:
    async def render(console: Console) -> Response[bytes]:
        if not console.caller.ops:
            return redirect(f"/ui/tenants/{console.caller.principal.tenant}/usage")
        gw = console.gateway
        now = datetime.now(UTC)
        today, month = day_start(now), month_start(now)
        # Today's tables and charts from one query; the month's from another.
        day_rows = await usage(gw, today, None, "tenant,model,deployment", None)
        by_tenant_day, by_model, by_deployment = (regroup(day_rows, k) for k in ("tenant", "model", "deployment"))
        by_tenant_month = await usage(gw, month, None, "tenant", None)
        hourly = await usage(gw, (now - timedelta(hours=23)).strftime("%Y-%m-%dT%H:00:00Z"), None, "hour", None)
        registry = gw.metrics.registry
        latency = quantiles(registry, "sluicegate_request_duration_seconds", (0.5, 0.99))
        ttft = quantiles(registry, "sluicegate_time_to_first_token_seconds", (0.5, 0.99))
        per_hour = [(h[11:16], n) for h, n in charts.series(charts.hours(now), hourly, "hour", "requests")]
        traffic = charts.columns(per_hour, charts.count, title="Requests by hour (UTC)")
        ctx = console.ctx(
            today=totals(by_tenant_day), month=totals(by_tenant_month), latency=latency, ttft=ttft, traffic=traffic,
            tenants_today=_bars(by_tenant_day, "tenant", title="Spend today by tenant"),
            tenants_month=_bars(by_tenant_month, "tenant", title="Spend this month by tenant"),
            models=_bars(by_model, "model", title="Spend today by model alias"),
            deployments=_bars(by_deployment, "deployment", title="Spend today by deployment"),
            rows_model=by_model, rows_deployment=by_deployment,
        )  # fmt: skip
        return page("overview.html", **ctx)

    return await show(request, render)


def _range(request: Request[Any, Any, Any]) -> tuple[str | None, str | None]:
    return request.query_params.get("from") or None, request.query_params.get("to") or None


@get("/ui/tenants/{tenant_id:str}/usage", include_in_schema=False)
async def tenant_usage(request: Request[Any, Any, Any], tenant_id: str) -> Response[bytes]:
    async def render(console: Console) -> Response[bytes]:
        tenant = await read_tenant(console.caller, console.store, tenant_id)
        start, end = _range(request)
        errors: dict[str, str] = {}
        try:
            rows = await usage(console.gateway, start, end, "day,model", tenant.id)
        except InvalidRequest as exc:
            errors[exc.param or "from"] = exc.message
            rows = []
        daily, by_model = regroup(rows, "day"), regroup(rows, "model")
        now = datetime.now(UTC)
        try:
            span = charts.days(parse_time(start, "from", now - timedelta(days=30)), parse_time(end, "to", now))
        except ReportError:
            span = []
        spend = charts.columns(charts.series(span, daily, "day", "cost_pico_usd"), charts.usd, title="Spend by day (UTC)")
        ctx = console.ctx(
            tenant=tenant, start=start or "", end=end or "", errors=errors, total=totals(daily), spend=spend,
            models=_bars(by_model, "model", title="Spend by model alias"), rows_model=by_model,
        )  # fmt: skip
        return page("usage.html", status=400 if errors else 200, **ctx)

    return await show(request, render)


@get("/ui/tenants/{tenant_id:str}/usage.csv", include_in_schema=False)
async def tenant_usage_csv(request: Request[Any, Any, Any], tenant_id: str) -> Response[bytes]:
    async def render(console: Console) -> Response[bytes]:
        tenant = await read_tenant(console.caller, console.store, tenant_id)
        start, end = _range(request)
        group = request.query_params.get("group_by") or "day,model"
        if any(g.strip() not in GROUPS for g in group.split(",")):
            raise InvalidRequest(f"`group_by` must name some of {', '.join(GROUPS)}.", param="group_by")
        rows = await usage(console.gateway, start, end, group, tenant.id)
        names = [g.strip() for g in group.split(",")]
        if "key" in names and "tenant" not in names:
            names.insert(names.index("key"), "tenant")
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([*names, *CSV_COLUMNS])
        for row in rows:
            writer.writerow([row.get(n, "") for n in names] + [row[c] for c in CSV_COLUMNS])
        disposition = f'attachment; filename="usage-{tenant.id}.csv"'
        headers = {**SECURITY_HEADERS, "content-disposition": disposition}
        return Response(out.getvalue().encode(), media_type="text/csv; charset=utf-8", headers=headers)

    return await show(request, render)


ROUTES = [overview, tenant_usage, tenant_usage_csv]
