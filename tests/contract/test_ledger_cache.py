"""Both ledgers keep what the response cache did for a row (migration ledger/0008 for PostgreSQL, layout 5 for SQLite).

A hit's row names the entry and what it saved; usage reports count hits and sum the savings per group.
"""

from __future__ import annotations

from budgets.ledger_query import UsageQuery
from tests.contract.test_ledger import ALL_TIME, BIG, LedgerFactory, make_row, new_ledger, postgres_dsn, started

__all__ = ["new_ledger", "postgres_dsn"]  # fixtures


async def test_a_rows_cache_fields_are_kept_and_reports_sum_savings(new_ledger: LedgerFactory) -> None:
    ledger = await started(new_ledger, flush_interval_s=60)
    rows = [
        make_row(1, cache="miss", cache_entry="0123456789abcdef"),
        make_row(2, cache="hit", cache_entry="0123456789abcdef", cost=0, saved=BIG),
        make_row(3, cache="hit", cache_entry="fedcba9876543210", cost=5, saved=7, model="gpt-large"),
        make_row(4, cache="bypass"),
        make_row(5),
    ]
    for row in rows:
        ledger.record(row)
    await ledger.flush()
    kept = await ledger.rows(None, *ALL_TIME, limit=10)
    assert sorted(kept, key=lambda r: r.request_id) == rows
    by_model = await ledger.usage(UsageQuery(start=ALL_TIME[0], end=ALL_TIME[1], group_by=["tenant", "model"]))
    assert [(u.group["model"], u.requests, u.cache_hits, u.saved) for u in by_model] == [("gpt-large", 1, 1, 7), ("gpt-small", 4, 1, BIG)]
