"""The embedded ledger's rollups: filled from existing rows on upgrade (layout 5 --> 6), and kept on delete."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

from budgets.ledger_query import UsageQuery
from budgets.ledger_rollup import HourlySums
from budgets.ledger_row import LedgerRow
from budgets.ledger_sqlite import SQLiteLedger
from budgets.ledger_sqlite_schema import VERSION
from tests.contract.test_ledger import make_row

T0 = datetime(2026, 11, 30, 22, 30, tzinfo=timezone.utc)
WINDOW = (T0 - timedelta(days=1), T0 + timedelta(days=1))


def _rollup(path: Path) -> list[list[tuple[object, ...]]]:
    with sqlite3.connect(path) as conn:
        tables = ("ledger_hourly", "ledger_daily")
        return [[tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4, 5, 6")] for table in tables]


def _sums(rows: list[LedgerRow]) -> list[list[tuple[object, ...]]]:
    sums = HourlySums()
    for row in rows:
        sums.add(row)
    return [sorted(sums.records()), sorted(sums.daily_records())]


def _rows() -> list[LedgerRow]:
    return [
        make_row(n, started_at=T0 + timedelta(minutes=13 * n), tenant=("acme", "globex")[n % 2], status=(200, 500, 429)[n % 3],
                 cache=("hit", None, "miss")[n % 3], saved=n)
        for n in range(20)
    ]  # fmt: skip


async def _write(path: Path, rows: list[LedgerRow]) -> None:
    ledger = SQLiteLedger(str(path))
    await ledger.start()
    try:
        for row in rows:
            ledger.record(row)
        await ledger.flush()
    finally:
        await ledger.close()


async def test_a_layout_5_database_gains_a_rollup_of_the_rows_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    rows = _rows()
    await _write(path, rows)
    with sqlite3.connect(path) as conn:  # what layout 5 was: the ledger alone
        conn.execute("DROP TRIGGER ledger_rollup_delete")
        conn.execute("DROP TABLE ledger_hourly")
        conn.execute("DROP TABLE ledger_daily")
        conn.execute("PRAGMA user_version = 5")
    ledger = SQLiteLedger(str(path))
    await ledger.start()
    try:
        kept = await ledger.rows(None, *WINDOW, limit=100)
        assert kept == rows
        for group_by in (["tenant", "status"], ["hour"], []):
            query = UsageQuery(start=T0 - timedelta(hours=30), end=T0 + timedelta(hours=5), group_by=group_by)  # type: ignore[arg-type]
            assert await ledger.usage(query) == await ledger.usage(query, "raw")
    finally:
        await ledger.close()
    assert _rollup(path) == _sums(rows)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == VERSION == 6


async def test_rows_deleted_from_the_ledger_leave_the_rollup(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    rows = _rows()
    await _write(path, rows)
    gone = {"req-0", "req-3", "req-4"}
    with sqlite3.connect(path) as conn:
        conn.executemany("DELETE FROM ledger WHERE request_id = ?", [(r,) for r in gone])
    assert _rollup(path) == _sums([r for r in rows if r.request_id not in gone])
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM ledger")
    assert _rollup(path) == [[], []]
