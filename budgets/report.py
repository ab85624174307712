"""Usage reports for FinOps: parsing the query, and rendering as table, CSV or JSON."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec

from budgets.ledger_query import UsageQuery, UsageRow
from budgets.prices import usd

COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd", "errors")


class ReportError(ValueError):
    """A query parameter is wrong; the message names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def parse_time(value: str | None, param: str, default: datetime) -> datetime:
    if not value:
        return default
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(param, f"`{param}` must be an ISO 8601 date or time, e.g. 2026-11-01 or 2026-11-01T00:00:00Z") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def build_query(start: str | None, end: str | None, group_by: str | None, tenant: str | None) -> UsageQuery:
    """Defaults: the last 30 days, grouped by nothing."""
    now = datetime.now(timezone.utc)
    names = [g.strip() for g in (group_by or "").split(",") if g.strip()]
    try:
        return msgspec.convert(
            {
                "start": parse_time(start, "from", now - timedelta(days=30)),
                "end": parse_time(end, "to", now),
                "tenant": tenant,
                "group_by": names,
            },
            UsageQuery,
        )
    except (msgspec.ValidationError, ValueError) as exc:
        if isinstance(exc, ReportError):
            raise
        raise ReportError("group_by" if "group_by" in str(exc) or "unknown" in str(exc) else "to", str(exc)) from None


def as_dicts(rows: list[UsageRow]) -> list[dict[str, Any]]:
    return [
        {
            **row.group,
            "requests": row.requests,
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "cached_tokens": row.cached_tokens,
            "cost_pico_usd": row.cost,
            "cost_usd": usd(row.cost),
            "errors": row.errors,
            "cache_hits": row.cache_hits,
            "saved_pico_usd": row.saved,
            "saved_usd": usd(row.saved),
        }
        for row in rows
    ]


def render(rows: list[UsageRow], group_by: list[str], fmt: str) -> str:
    records = as_dicts(rows)
    if fmt == "json":
        return msgspec.json.encode(records).decode()
    headers = [*group_by, *COLUMNS]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=headers, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue()
    cells = [[str(r.get(h, "")) for h in headers] for r in records]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines) + "\n"
