"""The PostgreSQL ledger's rollups (migration ledger/0010), against the real server.

The migration fills the rollups from the rows a ledger already holds; deletes
and truncation keep them equal to the rows; and on an ordinary role the
rollups are under the same row-level security as the ledger: a tenant's
report read from them shows that tenant's sums only, even when the query
forgets to say whose. A role that may not read them still gets its reports, from the rows.
"""

from __future__ import annotations

import logging
import secrets
import shutil
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import msgspec
import pytest

import budgets.ledger_postgres
from budgets.ledger import LedgerOptions
from budgets.ledger_postgres import PostgresLedger
from budgets.ledger_query import Dialect, UsageQuery, to_epoch_us
from budgets.ledger_rollup import HourlySums
from budgets.ledger_row import LedgerRow
from budgets.ledger_usage import reads_rollup, usage_sql
from budgets.migrate import MIGRATIONS_DIR, migrate
from tests.contract.test_ledger import ADMIN_DSN, database_dsn, make_row
from tests.integration.rls_scratch import Rls, scratch

T0 = datetime(2030, 3, 1, 22, 30, tzinfo=timezone.utc)
WINDOW = (T0 - timedelta(days=2), T0 + timedelta(days=2))
GRANTS = """
GRANT SELECT, INSERT ON ledger TO {role};
GRANT SELECT ON ledger_hourly, ledger_daily TO {role};
GRANT EXECUTE ON FUNCTION ledger_partition(integer, integer) TO {role};
GRANT SELECT ON schema_migrations TO {role};
"""


def _rows(tenants: tuple[str, str], count: int = 24) -> list[LedgerRow]:
    return [
        make_row(n, tenant=tenants[n % 2], started_at=T0 + timedelta(minutes=11 * n), status=(200, 503)[n % 2 * (n % 3 == 0)],
                 cache=("hit", None)[n % 2], saved=n, model=("m1", "m2")[n % 3 == 0])
        for n in range(count)
    ]  # fmt: skip


def _sums(rows: list[LedgerRow]) -> list[list[tuple[object, ...]]]:
    sums = HourlySums()
    for row in rows:
        sums.add(row)
    return [sorted(sums.records()), sorted(sums.daily_records())]


async def _rollup(conn: asyncpg.Connection) -> list[list[tuple[object, ...]]]:
    out = []
    for table in ("ledger_hourly", "ledger_daily"):
        records = await conn.fetch(f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4, 5, 6")
        out.append([(to_epoch_us(r[0]), *r[1:]) for r in records])
    return out


@pytest.fixture
async def database() -> AsyncIterator[str]:
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        pytest.skip("PostgreSQL is not reachable")
    name = f"sg_rollup_{secrets.token_hex(5)}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield database_dsn(name)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def test_the_migration_fills_the_rollup_from_the_rows_already_there(database: str, tmp_path: Path) -> None:
    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if int(path.name[:4]) < 10:
            shutil.copy(path, earlier / path.name)
    await migrate(database, earlier)
    rows = _rows(("acme", "globex"))
    ledger = PostgresLedger(database, str(tmp_path / "spool"), options=LedgerOptions(flush_interval_s=60), auto_migrate=False)
    await ledger.start()
    try:
        for row in rows:
            ledger.record(row)
        await ledger.flush()
        query = UsageQuery(start=WINDOW[0], end=WINDOW[1], group_by=["tenant", "day"])
        assert reads_rollup(query)
        before = await ledger.usage(query)  # no rollup yet: read from the rows
        assert await migrate(database) == [10]
        assert await ledger.usage(query) == before == await ledger.usage(query, "raw")
    finally:
        await ledger.close()
    conn = await asyncpg.connect(database)
    try:
        assert await _rollup(conn) == _sums(rows)
        await conn.execute("DELETE FROM ledger WHERE request_id = ANY($1::text[])", ["req-1", "req-2", "req-9"])
        assert await _rollup(conn) == _sums([r for r in rows if r.request_id not in {"req-1", "req-2", "req-9"}])
        await conn.execute("DELETE FROM ledger_hourly")
        await conn.execute("DELETE FROM ledger_daily")
        await conn.execute("SELECT ledger_rollup_rebuild($1, $2)", WINDOW[0], WINDOW[1])
        assert await _rollup(conn) == _sums([r for r in rows if r.request_id not in {"req-1", "req-2", "req-9"}])
        await conn.execute("TRUNCATE ledger")
        assert await _rollup(conn) == [[], []]
    finally:
        await conn.close()


async def _prepare(owner_dsn: str, a: str, b: str) -> None:
    await migrate(owner_dsn)


@pytest.fixture(scope="module")
async def rls() -> AsyncIterator[Rls]:
    async with scratch("sg_rollup_rls", GRANTS, _prepare) as env:
        yield env


def _forgetful_usage_sql(query: UsageQuery, dialect: Dialect) -> tuple[str, list[object]]:
    """A rollup query that forgets to filter by tenant."""
    return usage_sql(msgspec.structs.replace(query, tenant=None), dialect)


async def test_a_tenants_report_from_the_rollup_shows_its_own_sums_only(
    rls: Rls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _rows((rls.a, rls.b))
    ledger = PostgresLedger(rls.role_dsn, str(tmp_path / "spool"), options=LedgerOptions(flush_interval_s=60))
    await ledger.start()
    try:
        for row in rows:
            ledger.record(row)
        await ledger.flush()  # the trigger writes the rollup, though the role may only read it
        assert ledger.healthy and not ledger.spool.pending()
        query = UsageQuery(
            start=T0 - timedelta(days=1, minutes=20), end=T0 + timedelta(hours=4, minutes=5), tenant=rls.a, group_by=["tenant", "day"]
        )
        assert reads_rollup(query)
        with caplog.at_level(logging.WARNING, logger="budgets.ledger_postgres"):
            own = await ledger.usage(query)
        assert not caplog.records, "the rollup was not read"
        assert own == await ledger.usage(query, "raw")
        assert {u.group["tenant"] for u in own} == {rls.a}
        monkeypatch.setattr(budgets.ledger_postgres, "usage_sql", _forgetful_usage_sql)
        assert await ledger.usage(query) == own
    finally:
        await ledger.close()


async def test_a_role_that_may_not_read_the_rollup_gets_reports_from_the_rows(
    rls: Rls, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    owner = await asyncpg.connect(rls.owner_dsn)
    role = rls.role_dsn.split("//", 1)[1].split("@", 1)[0]
    await owner.execute(f"REVOKE SELECT ON ledger_daily FROM {role}")
    try:
        ledger = PostgresLedger(rls.role_dsn, str(tmp_path / "spool"), options=LedgerOptions(flush_interval_s=60))
        await ledger.start()
        try:
            for row in _rows((rls.a, rls.b)):  # rows another test may have written already: stored once
                ledger.record(row)
            await ledger.flush()
            query = UsageQuery(start=T0 - timedelta(days=1), end=T0 + timedelta(days=1), tenant=rls.b, group_by=["model"])
            with caplog.at_level(logging.WARNING, logger="budgets.ledger_postgres"):
                got = await ledger.usage(query)
            assert "rollups are not readable" in caplog.text
            assert got == await ledger.usage(query, "raw") and got
        finally:
            await ledger.close()
    finally:
        await owner.execute(f"GRANT SELECT ON ledger_daily TO {role}")
        await owner.close()
