"""Both ledgers keep the batch a row's request ran in (migration ledger/0005 for PostgreSQL, layout 4 for SQLite)."""

from __future__ import annotations

from tests.contract.test_ledger import ALL_TIME, LedgerFactory, make_row, new_ledger, postgres_dsn, started

__all__ = ["new_ledger", "postgres_dsn"]  # fixtures


async def test_a_rows_batch_id_is_kept(new_ledger: LedgerFactory) -> None:
    ledger = await started(new_ledger, flush_interval_s=60)
    rows = [make_row(1, batch_id="batch_0123abcd"), make_row(2)]
    for row in rows:
        ledger.record(row)
    await ledger.flush()
    kept = await ledger.rows(None, *ALL_TIME, limit=10)
    assert sorted((r.request_id, r.batch_id) for r in kept) == [("req-1", "batch_0123abcd"), ("req-2", None)]
    assert sorted(kept, key=lambda r: r.request_id) == rows
