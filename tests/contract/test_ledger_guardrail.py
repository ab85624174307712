"""Both ledgers keep the guardrail that blocked a row's request (migration ledger/0009 for PostgreSQL, the detail array for SQLite).

With or without a cache on the same row, and rows without a guardrail read as none.
"""

from __future__ import annotations

from tests.contract.test_ledger import ALL_TIME, LedgerFactory, make_row, new_ledger, postgres_dsn, started

__all__ = ["new_ledger", "postgres_dsn"]  # fixtures


async def test_a_rows_guardrail_is_kept_with_or_without_cache_fields(new_ledger: LedgerFactory) -> None:
    ledger = await started(new_ledger, flush_interval_s=60)
    rows = [
        make_row(1, guardrail="tools-only", error="guardrail_blocked", status=400),
        make_row(2, guardrail="no-secrets", error="guardrail_blocked", cache="miss", cache_entry="0123456789abcdef"),
        make_row(3, cache="bypass"),
        make_row(4),
    ]
    for row in rows:
        ledger.record(row)
    await ledger.flush()
    kept = sorted(await ledger.rows(None, *ALL_TIME, limit=10), key=lambda r: r.request_id)
    assert kept == rows
    assert [r.guardrail for r in kept] == ["tools-only", "no-secrets", None, None]
