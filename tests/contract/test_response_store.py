"""One behaviour for both response stores: embedded SQLite and PostgreSQL (asyncpg).

The PostgreSQL store runs against a database created for this module and
dropped at its end, migrated by the store itself on first use. Below the
contract: PostgreSQL-only behaviour (row-level security binds an ordinary
role; a silent server fails a call within its deadline).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
import pytest

from budgets.migrate import migrate
from core.config import Config
from router.responses_records import ResponseStore, ResponseStoreUnavailable, StoredResponse
from router.responses_store import SQLiteResponseStore, open_response_store
from router.responses_store_postgres import PostgresResponseStore
from tests.fakes.blackhole import BlackHole
from tests.integration.rls_scratch import Rls, as_role, scratch

ADMIN_DSN = os.environ.get("SLUICEGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
NO_POSTGRES = "PostgreSQL is not reachable at SLUICEGATE_TEST_POSTGRES_DSN"


def database_dsn(name: str) -> str:
    return f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"


def record(n: int, tenant: str = "tenant-a", **changes: object) -> StoredResponse:
    fields: dict[str, object] = {
        "id": f"resp_{n}",
        "tenant": tenant,
        "created_at": 1_700_000_000 + n,
        # A NUL and non-ASCII text: kept byte for byte.
        "response": b'{"id":"resp_%d","object":"response","note":"caf\xc3\xa9 \\u0000"}' % n,
        "input_items": b'[{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}]',
        "conversation": b"[]",
    }
    fields.update(changes)
    return StoredResponse(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
async def pg_database() -> AsyncIterator[str | None]:
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        yield None
        return
    name = f"sg_responses_{secrets.token_hex(6)}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield database_dsn(name)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, pg_database: str | None) -> AsyncIterator[ResponseStore]:
    made: ResponseStore
    if request.param == "sqlite":
        made = SQLiteResponseStore(str(tmp_path / "responses.sqlite"))
    else:
        if pg_database is None:
            pytest.skip(NO_POSTGRES)
        made = PostgresResponseStore(pg_database)
    await made.start()
    if request.param == "postgres":
        # Each test starts from an empty table (the store created it on this first call if missing).
        await made.get("nobody", "none")
        conn = await asyncpg.connect(pg_database)
        await conn.execute("TRUNCATE responses")
        await conn.close()
    yield made
    await made.close()


async def test_a_stored_response_reads_back_byte_for_byte(store: ResponseStore) -> None:
    kept = record(1, conversation=b'[{"type":"message","role":"assistant","content":[]}]')
    await store.put(kept)
    assert await store.get("tenant-a", "resp_1") == kept


async def test_a_missing_response_is_none(store: ResponseStore) -> None:
    assert await store.get("tenant-a", "resp_404") is None
    assert await store.delete("tenant-a", "resp_404") is False


async def test_another_tenants_response_is_as_absent_as_a_missing_one(store: ResponseStore) -> None:
    await store.put(record(2, tenant="tenant-a"))
    assert await store.get("tenant-b", "resp_2") is None
    assert await store.delete("tenant-b", "resp_2") is False
    assert await store.get("tenant-a", "resp_2") is not None, "another tenant's delete must not remove it"


async def test_the_same_id_under_two_tenants_is_two_responses(store: ResponseStore) -> None:
    a, b = record(3, tenant="tenant-a"), record(3, tenant="tenant-b", response=b'{"b":1}')
    await store.put(a)
    await store.put(b)
    assert await store.get("tenant-a", "resp_3") == a
    assert await store.get("tenant-b", "resp_3") == b


async def test_delete_removes_it_once(store: ResponseStore) -> None:
    await store.put(record(4))
    assert await store.delete("tenant-a", "resp_4") is True
    assert await store.get("tenant-a", "resp_4") is None
    assert await store.delete("tenant-a", "resp_4") is False


async def test_putting_an_id_again_keeps_the_first(store: ResponseStore) -> None:
    first = record(5)
    await store.put(first)
    await store.put(record(5, response=b'{"second":true}'))
    assert await store.get("tenant-a", "resp_5") == first


async def test_concurrent_puts_all_land(store: ResponseStore) -> None:
    await asyncio.gather(*(store.put(record(100 + n)) for n in range(20)))
    found = await asyncio.gather(*(store.get("tenant-a", f"resp_{100 + n}") for n in range(20)))
    assert all(r is not None for r in found)


def test_the_store_follows_the_ledger(tmp_path: Path) -> None:
    def opened(**state: object) -> ResponseStore:
        return open_response_store(msgspec.convert({"state": state}, Config))

    beside = opened(ledger_path=str(tmp_path / "ledger.sqlite"))
    assert isinstance(beside, SQLiteResponseStore) and beside.path == str(tmp_path / "ledger.sqlite.responses")
    off = opened(ledger="off")
    assert isinstance(off, SQLiteResponseStore) and off.path == ":memory:"
    assert isinstance(opened(ledger="postgres", postgres_dsn="postgresql://u@h/db"), PostgresResponseStore)


async def test_the_embedded_store_makes_no_file_until_used(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite"
    store = SQLiteResponseStore(str(path))
    await store.start()
    assert not path.exists()
    await store.put(record(1))
    assert path.exists()
    await store.close()


# --- PostgreSQL only ------------------------------------------------------------------

GRANTS = """
GRANT SELECT, INSERT, DELETE ON responses TO {role};
GRANT SELECT ON schema_migrations TO {role};
"""


async def _prepare(owner_dsn: str, a: str, b: str) -> None:
    await migrate(owner_dsn)


@pytest.fixture(scope="module")
async def rls() -> AsyncIterator[Rls]:
    async with scratch("sg_responses_rls", GRANTS, _prepare) as env:
        yield env


async def test_row_level_security_binds_the_store_and_the_table(rls: Rls) -> None:
    store = PostgresResponseStore(rls.role_dsn)
    await store.start()
    try:
        await store.put(record(1, tenant=rls.a))
        await store.put(record(2, tenant=rls.b))
        assert await store.get(rls.a, "resp_1") is not None
        assert await store.get(rls.a, "resp_2") is None
    finally:
        await store.close()
    async with as_role(rls) as conn:
        assert await conn.fetchval("SELECT count(*) FROM responses") == 0, "unscoped, the table looks empty"
        async with conn.transaction():
            await conn.execute("SELECT set_config('sluicegate.tenant', $1, true)", rls.a)
            assert [r["id"] for r in await conn.fetch("SELECT id FROM responses")] == ["resp_1"]
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(
                    "INSERT INTO responses VALUES ($1, 'x', now(), ''::bytea, ''::bytea, ''::bytea)", rls.b
                )


async def test_a_silent_server_fails_a_call_within_its_deadline(pg_database: str | None) -> None:
    if pg_database is None:
        pytest.skip(NO_POSTGRES)
    host, _, port = pg_database.split("@", 1)[1].split("/", 1)[0].partition(":")
    hole = BlackHole(host, int(port or 5432))
    hole.start()
    try:
        dsn = f"postgresql://postgres@{hole.dsn_host}/{pg_database.rsplit('/', 1)[1]}"
        store = PostgresResponseStore(dsn, timeout_s=0.5)
        await store.start()
        await store.get("tenant-a", "warm-up")  # connected and migrated through the proxy
        hole.swallow()
        started = time.monotonic()
        with pytest.raises(ResponseStoreUnavailable):
            await store.get("tenant-a", "resp_1")
        assert time.monotonic() - started < 2.0
        await store.close()
    finally:
        hole.close()
