"""The PostgreSQL ledger keeps each row's config version and canary arm (migration 0003).

A database migrated by an earlier release, with rows in it, takes the migration:
its rows read as version 0 outside any canary, a writer that does not yet name
the new columns (a replica not yet upgraded) still writes, and rows written now
keep their version and arm through either write method.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from budgets.ledger import LedgerOptions
from budgets.ledger_postgres import PostgresLedger, WriteMethod
from budgets.migrate import MIGRATIONS_DIR, migrate
from tests.contract.test_ledger import ADMIN_DSN, T0, database_dsn, make_row

# What the writer of the earlier release inserts: no config_version, no arm.
_EARLIER_INSERT = "INSERT INTO ledger (request_id, started_at, finished_at, tenant, key_id, model, deployment, " \
                  "provider, prompt_tokens, completion_tokens, cached_tokens, cost, latency_ms, status, stream) " \
                  "VALUES ($1, $2, $2, 'tenant-a', 'k', 'm', 'd', 'p', 1, 1, 0, 7, 1.0, 200, false)"  # fmt: skip
WINDOW = (T0 - timedelta(days=1), T0 + timedelta(days=1))


@pytest.fixture
async def earlier_database(tmp_path: Path) -> AsyncIterator[str]:
    """A database migrated by the release before 0003, holding two rows it wrote."""
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        pytest.skip("PostgreSQL not reachable at SLUICEGATE_TEST_POSTGRES_DSN")
    name = f"sg_ledger_version_{secrets.token_hex(5)}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        earlier = tmp_path / "migrations"
        earlier.mkdir()
        for path in sorted(MIGRATIONS_DIR.glob("000[12]_*.sql")):
            (earlier / path.name).write_bytes(path.read_bytes())
        assert await migrate(database_dsn(name), earlier) == [1, 2]
        conn = await asyncpg.connect(database_dsn(name))
        try:
            await conn.execute("SELECT ledger_partition(2024, 5)")
            for n in range(2):
                await conn.execute(_EARLIER_INSERT, f"old-{n}", T0 - timedelta(minutes=n))
        finally:
            await conn.close()
        yield name
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


@pytest.mark.parametrize("write_method", ["copy", "unnest"])
async def test_earlier_rows_read_as_version_0_and_new_rows_keep_version_and_arm(
    earlier_database: str, tmp_path: Path, write_method: WriteMethod
) -> None:
    dsn = database_dsn(earlier_database)
    assert 3 in await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_EARLIER_INSERT, "not-yet-upgraded", T0 + timedelta(minutes=1))
    finally:
        await conn.close()
    new = [make_row(n, config_version=version, arm=arm)
           for n, (version, arm) in enumerate([(5, "stable"), (6, "candidate"), (6, "shadow"), (7, None)])]  # fmt: skip
    ledger = PostgresLedger(dsn, str(tmp_path / "spool"), options=LedgerOptions(flush_interval_s=60), write_method=write_method)
    await ledger.start()
    try:
        for row in new:
            ledger.record(row)
        await ledger.flush()
        assert ledger.healthy and not ledger.spool.pending(), "the batch was not written"
        rows = await ledger.rows(None, *WINDOW, limit=100)
    finally:
        await ledger.close()
    by_id = {row.request_id: row for row in rows}
    for earlier in ("old-0", "old-1", "not-yet-upgraded"):
        assert (by_id[earlier].config_version, by_id[earlier].arm) == (0, None)
    assert [by_id[row.request_id] for row in new] == new
