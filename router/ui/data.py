"""What the console's pages read: the FinOps queries, budget state and this process's latency figures.

Usage comes from the ledger's own aggregate query (``budgets.report.build_query``
and ``Ledger.usage``, as ``GET /v1/ledger/usage``), one query per table or chart,
never one per row; budget lines are those of ``GET /v1/ledger/budgets``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from budgets.prices import usd
from budgets.report import as_dicts
from core.config import BudgetConfig
from router.gateway import Gateway
from router.routes_finops import budget_lines, usage_report
from router.tenant_records import AuditEntry

ALERT_ACTION = "budget.threshold"


async def usage(gateway: Gateway, start: str | None, end: str | None, group_by: str, tenant: str | None) -> list[dict[str, Any]]:
    """Ledger totals for ``tenant`` (None: every tenant) grouped by ``group_by``; the API's errors for bad input."""
    _, rows = await usage_report(gateway, start, end, group_by, tenant)
    return as_dicts(rows)


def regroup(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Rows of a finer grouping summed by ``key`` alone, most spent first: one query serves several tables."""
    sums = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_pico_usd", "errors", "cache_hits", "saved_pico_usd")
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        into = out.setdefault(str(row[key]), {key: row[key], **dict.fromkeys(sums, 0)})
        for name in sums:
            into[name] += int(row[name])
    for row in out.values():
        row["cost_usd"] = usd(row["cost_pico_usd"])
        row["saved_usd"] = usd(row["saved_pico_usd"])
    return sorted(out.values(), key=lambda row: (-row["cost_pico_usd"], str(row[key])))


def day_start(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT00:00:00Z")


def month_start(now: datetime) -> str:
    return now.strftime("%Y-%m-01T00:00:00Z")


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of every column of ``rows``; cost in pico-USD and as dollars."""
    keys = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_pico_usd")
    out: dict[str, Any] = {k: sum(int(r[k]) for r in rows) for k in keys}
    out["tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    out["cost_usd"] = out["cost_pico_usd"] / 1e12
    return out


@dataclass(slots=True, frozen=True)
class BudgetState:
    """One budget's figures and which of its alert thresholds spending has reached."""

    line: dict[str, Any]
    config: BudgetConfig
    percent: float
    reached: int | None  # the highest ``alert_at`` threshold reached, if any

    @property
    def level(self) -> str:
        if self.percent >= 100:
            return "exceeded"
        return "warning" if self.reached is not None else "ok"


async def budget_states(gateway: Gateway, tenant: str, budgets: list[BudgetConfig]) -> list[BudgetState]:
    lines = await budget_lines(gateway, f"t:{tenant}", budgets, datetime.now(UTC))
    out = []
    for line, config in zip(lines, budgets):
        limit = int(line["limit"])
        percent = 100.0 * int(line["spent"]) / limit if limit else 0.0
        reached = max((t for t in config.alert_at if percent >= t), default=None)
        out.append(BudgetState(line=line, config=config, percent=percent, reached=reached))
    return out


def alerts_of(entries: list[AuditEntry]) -> list[AuditEntry]:
    return [e for e in entries if e.action == ALERT_ACTION]


def quantiles(registry: CollectorRegistry, name: str, qs: tuple[float, ...]) -> list[float | None]:
    """Quantiles (as upper bucket bounds, seconds) of histogram ``name`` over all its labels, since this process started."""
    buckets: dict[float, float] = {}
    for metric in registry.collect():
        if metric.name != name:
            continue
        for sample in metric.samples:
            if sample.name == name + "_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0.0
    return [None if total <= 0 else next(bound for bound, count in ordered if count >= q * total) for q in qs]
