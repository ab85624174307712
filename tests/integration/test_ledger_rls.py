"""Row-level security on the ledger, against the real PostgreSQL.

A superuser bypasses every policy, and the test server's `postgres` is one: so
the owner applies the migrations, and the queries run as an ordinary role
granted what the ledger needs. As that role: with no tenant set the ledger
looks empty, with tenant A set only A's rows show, and a row of B's cannot be
written under A; every monthly partition, also one created later by the
writer, carries the same policy. Then the PostgreSQL ledger itself runs on
that role: it writes batches (creating a partition as it goes) and answers a
tenant's usage with that tenant's rows, even for a query that forgets to say
whose rows it wants.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import msgspec
import pytest

import budgets.ledger_postgres
from budgets.ledger import LedgerOptions
from budgets.ledger_postgres import PostgresLedger
from budgets.ledger_query import Dialect, UsageQuery, usage_sql
from budgets.migrate import MIGRATIONS_DIR, migrate
from core.pg_scope import policy_sql, scope
from tests.contract.test_ledger import ADMIN_DSN, T0, database_dsn, make_row
from tests.integration.rls_scratch import Rls, as_role, scratch

GRANTS = """
GRANT SELECT, INSERT ON ledger TO {role};
GRANT EXECUTE ON FUNCTION ledger_partition(integer, integer) TO {role};
GRANT SELECT ON schema_migrations TO {role};
"""
_INSERT = "INSERT INTO ledger (request_id, started_at, finished_at, tenant, key_id, model, deployment, provider, " \
          "prompt_tokens, completion_tokens, cached_tokens, cost, latency_ms, status, stream) " \
          "VALUES ($1, $2, $2, $3, 'k', 'm', 'd', 'p', 1, 1, 0, 7, 1.0, 200, false)"  # fmt: skip


async def _prepare(owner_dsn: str, a: str, b: str) -> None:
    await migrate(owner_dsn)
    owner = await asyncpg.connect(owner_dsn)
    try:
        # Seeded by the owner (a superuser: no policy applies) in a partition made before any test.
        await owner.execute("SELECT ledger_partition(2024, 5)")
        for n, tenant in enumerate([a, a, b]):
            await owner.execute(_INSERT, f"seed-{n}", T0 - timedelta(days=1), tenant)
    finally:
        await owner.close()


@pytest.fixture(scope="module")
async def rls() -> AsyncIterator[Rls]:
    async with scratch("sg_ledger_rls", GRANTS, _prepare) as env:
        yield env


@pytest.fixture
async def conn(rls: Rls) -> AsyncIterator[asyncpg.Connection]:
    async with as_role(rls) as connection:
        yield connection


async def _tenants(conn: asyncpg.Connection, table: str = "ledger") -> set[str]:
    return {r[0] for r in await conn.fetch(f"SELECT tenant FROM {table}")}


async def test_without_a_tenant_set_the_ledger_looks_empty(conn: asyncpg.Connection, rls: Rls) -> None:
    assert await conn.fetch("SELECT * FROM ledger") == []  # never set on this connection
    async with conn.transaction():
        await scope(conn, None)  # operators: every tenant
        assert {rls.a, rls.b} <= await _tenants(conn)
    async with conn.transaction():  # the setting was that transaction's own
        assert await conn.fetch("SELECT * FROM ledger") == []


async def test_a_tenant_set_sees_only_its_own_rows(conn: asyncpg.Connection, rls: Rls) -> None:
    async with conn.transaction():
        await scope(conn, rls.a)
        assert await _tenants(conn) == {rls.a}
        assert await conn.fetchval("SELECT count(*) FROM ledger") == 2
        assert await conn.fetch("SELECT * FROM ledger WHERE tenant = $1", rls.b) == []


async def test_a_row_of_another_tenant_cannot_be_written_under_a_tenant(conn: asyncpg.Connection, rls: Rls) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        async with conn.transaction():
            await scope(conn, rls.a)
            await conn.execute(_INSERT, "b-under-a", T0, rls.b)
    # The same row is accepted under B (then rolled back): the policy refuses, not a missing grant.
    transaction = conn.transaction()
    await transaction.start()
    try:
        await scope(conn, rls.b)
        await conn.execute(_INSERT, "b-under-b", T0, rls.b)
    finally:
        await transaction.rollback()


async def _policies(owner: asyncpg.Connection) -> dict[str, tuple[bool, bool, str | None, str | None]]:
    """Every ledger table (parent and partitions): RLS on, forced, and its policy's USING and CHECK."""
    records = await owner.fetch(
        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, p.qual, p.with_check FROM pg_class c "
        "LEFT JOIN pg_policies p ON p.tablename = c.relname AND p.policyname = 'tenant_isolation' "
        "WHERE c.oid = 'ledger'::regclass OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'ledger'::regclass)"
    )
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in records}


async def test_every_partition_carries_the_policy_also_one_created_later(conn: asyncpg.Connection, rls: Rls) -> None:
    async with conn.transaction():
        await conn.execute("SELECT ledger_partition(2031, 12)")  # as the writer adds one, on the ordinary role
    owner = await asyncpg.connect(rls.owner_dsn)
    try:
        policies = await _policies(owner)
        assert {"ledger", "ledger_y2024m05", "ledger_y2031m12"} <= set(policies)
        parent = policies["ledger"]
        assert parent[:2] == (True, True) and parent[2] is not None and "sluicegate.tenant" in parent[2]
        assert all(flags == parent for flags in policies.values()), policies
        bounds = await owner.fetchval("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'ledger_y2031m12'")
        assert bounds == "FOR VALUES FROM ('2031-12-01 00:00:00+00') TO ('2032-01-01 00:00:00+00')"
        # Named directly, a partition answers as the parent does.
        role = await conn.fetchval("SELECT current_user")
        await owner.execute(f"GRANT SELECT ON ledger_y2024m05 TO {role}")
    finally:
        await owner.close()
    assert await conn.fetch("SELECT * FROM ledger_y2024m05") == []
    async with conn.transaction():
        await scope(conn, rls.b)
        assert await _tenants(conn, "ledger_y2024m05") == {rls.b}


async def test_partitions_made_before_the_migration_are_put_under_the_policy(rls: Rls, tmp_path: Path) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    database = f"sg_ledger_upgrade_{secrets.token_hex(5)}"
    await admin.execute(f"CREATE DATABASE {database}")
    try:
        first_only = tmp_path / "migrations"
        first_only.mkdir()
        (first_only / "0001_ledger.sql").write_bytes((MIGRATIONS_DIR / "0001_ledger.sql").read_bytes())
        await migrate(database_dsn(database), first_only)
        owner = await asyncpg.connect(database_dsn(database))
        try:
            # As the writer made them before row-level security.
            await owner.execute(
                "CREATE TABLE ledger_y2024m05 PARTITION OF ledger "
                "FOR VALUES FROM ('2024-05-01 00:00:00+00') TO ('2024-06-01 00:00:00+00')"
            )
            assert (await migrate(database_dsn(database)))[:1] == [2]  # and any later ones
            policies = await _policies(owner)
        finally:
            await owner.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.close()
    assert set(policies) == {"ledger", "ledger_y2024m05"}
    assert policies["ledger_y2024m05"] == policies["ledger"] and policies["ledger"][:2] == (True, True)


def test_the_migration_puts_the_ledger_under_the_convention() -> None:
    sql = (MIGRATIONS_DIR / "0002_row_level_security.sql").read_text(encoding="utf-8")
    assert policy_sql("ledger", "tenant") in sql


def _forgetful_usage_sql(query: UsageQuery, dialect: Dialect) -> tuple[str, list[object]]:
    """A usage query that forgets to filter by tenant."""
    return usage_sql(msgspec.structs.replace(query, tenant=None), dialect)


async def test_the_ledger_on_an_ordinary_role_writes_batches_and_reports_per_tenant(
    rls: Rls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, d = f"c-{secrets.token_hex(3)}", f"d-{secrets.token_hex(3)}"
    month = datetime(2030, 3, 1, tzinfo=timezone.utc)  # no partition yet: the writer makes one
    rows = [make_row(1000 + n, tenant=(c, d)[n % 2], started_at=month + timedelta(minutes=n)) for n in range(10)]
    ledger = PostgresLedger(rls.role_dsn, str(tmp_path / "spool"), options=LedgerOptions(flush_interval_s=60))
    await ledger.start()
    try:
        for row in rows:
            ledger.record(row)
        await ledger.flush()
        assert ledger.healthy and not ledger.spool.pending(), "the batch was not written"
        window = (month, month + timedelta(days=1))
        [own] = await ledger.usage(UsageQuery(start=window[0], end=window[1], tenant=c, group_by=["tenant"]))
        assert (own.group, own.requests) == ({"tenant": c}, 5)
        assert {r.tenant for r in await ledger.rows(d, *window, limit=100)} == {d}
        everyone = await ledger.usage(UsageQuery(start=window[0], end=window[1], group_by=["tenant"]))
        assert [(u.group["tenant"], u.requests) for u in everyone] == sorted([(c, 5), (d, 5)])

        # Row-level security backs the query's own filter: without it, still only c's rows.
        monkeypatch.setattr(budgets.ledger_postgres, "usage_sql", _forgetful_usage_sql)
        scoped = await ledger.usage(UsageQuery(start=window[0], end=window[1], tenant=c, group_by=["tenant"]))
        assert [(u.group["tenant"], u.requests) for u in scoped] == [(c, 5)]
        unscoped = await ledger.usage(UsageQuery(start=window[0], end=window[1], tenant=None, group_by=["tenant"]))
        assert {u.group["tenant"] for u in unscoped} == {c, d}  # operators see all
    finally:
        await ledger.close()
    owner = await asyncpg.connect(rls.owner_dsn)
    try:
        assert await owner.fetchval("SELECT count(*) FROM ledger WHERE tenant IN ($1, $2)", c, d) == len(rows)
    finally:
        await owner.close()
