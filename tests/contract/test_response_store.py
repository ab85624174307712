"""One behaviour for every response store: in memory, embedded SQLite and PostgreSQL (asyncpg).

The PostgreSQL store runs against a database created for this module and
dropped at its end, migrated by the store itself on first use. Each store is
given a 30-day retention on a clock the test moves. Below the contract:
PostgreSQL-only behaviour (row-level security binds an ordinary role, the
sweep under it included; a silent server fails a call within its deadline).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import msgspec
import pytest

from budgets.migrate import migrate
from core.config import Config
from router.responses_records import ResponseStore, ResponseStoreUnavailable, Retention, StoredResponse
from router.responses_store import SQLiteResponseStore, open_response_store
from router.responses_store_postgres import PostgresResponseStore
from tests.fakes.blackhole import BlackHole
from tests.integration.rls_scratch import Rls, as_role, scratch

ADMIN_DSN = os.environ.get("SLUICEGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
NO_POSTGRES = "PostgreSQL is not reachable at SLUICEGATE_TEST_POSTGRES_DSN"
DAY = 86_400
RETENTION_DAYS = 30
# Every record() is created within the first few minutes after this.
EPOCH = 1_700_000_000
Opener = Callable[[Retention], Awaitable[ResponseStore]]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def database_dsn(name: str) -> str:
    return f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"


def record(n: int, tenant: str = "tenant-a", **changes: object) -> StoredResponse:
    fields: dict[str, object] = {
        "id": f"resp_{n}",
        "tenant": tenant,
        "created_at": EPOCH + n,
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


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path, pg_database: str | None) -> AsyncIterator[Opener]:
    """Opens a store of this kind with a given retention; every store opened shares the one table."""
    if request.param == "postgres" and pg_database is None:
        pytest.skip(NO_POSTGRES)
    opened: list[ResponseStore] = []

    async def open_store(retention: Retention) -> ResponseStore:
        made: ResponseStore
        if request.param == "memory":
            made = SQLiteResponseStore(":memory:", retention)
        elif request.param == "sqlite":
            made = SQLiteResponseStore(str(tmp_path / "responses.sqlite"), retention)
        else:
            assert pg_database is not None
            made = PostgresResponseStore(pg_database, retention)
        await made.start()
        if request.param == "postgres" and not opened:
            # Each test starts from an empty table (the store created it on this first call if missing).
            await made.get("nobody", "none")
            conn = await asyncpg.connect(pg_database)
            await conn.execute("TRUNCATE responses")
            await conn.close()
        opened.append(made)
        return made

    yield open_store
    for made in opened:
        await made.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(EPOCH + 3600)


@pytest.fixture
async def store(opener: Opener, clock: Clock) -> ResponseStore:
    return await opener(Retention(RETENTION_DAYS, clock))


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


# --- expiry ---------------------------------------------------------------------------


async def test_an_expired_response_is_as_absent_as_a_missing_one_before_any_sweep(store: ResponseStore, clock: Clock) -> None:
    kept = record(6)
    await store.put(kept)
    clock.now = kept.created_at + RETENTION_DAYS * DAY - 1
    assert await store.get("tenant-a", "resp_6") == kept, "a second before its time it is still there"
    clock.now += 1
    assert await store.get("tenant-a", "resp_6") is None
    assert await store.delete("tenant-a", "resp_6") is False
    clock.now = kept.created_at + 1
    assert await store.get("tenant-a", "resp_6") == kept, "hidden by its age, not yet deleted: that is the sweep's work"


async def test_the_sweep_removes_only_expired_rows_of_every_tenant(store: ResponseStore, clock: Clock) -> None:
    old_a, old_b = record(10, tenant="tenant-a"), record(11, tenant="tenant-b")
    # The same id as an expired one, under another tenant, but newer: kept.
    young_a, young_b = record(12, tenant="tenant-a"), record(10, tenant="tenant-b", created_at=EPOCH + 2 * DAY)
    for r in (old_a, old_b, young_a, young_b):
        await store.put(r)
    clock.now = EPOCH + RETENTION_DAYS * DAY + 11  # old_a and old_b expired; young_a has a second left
    assert await store.sweep(100) == 2
    assert await store.sweep(100) == 0
    assert await store.get("tenant-a", "resp_12") == young_a
    assert await store.get("tenant-b", "resp_10") == young_b
    clock.now = EPOCH + 3600  # back before anything expired: the swept rows are gone for good
    assert await store.get("tenant-a", "resp_10") is None
    assert await store.get("tenant-b", "resp_11") is None
    assert await store.get("tenant-a", "resp_12") == young_a


async def test_the_sweep_deletes_in_bounded_batches_oldest_first(store: ResponseStore, clock: Clock) -> None:
    for n in range(20, 27):
        await store.put(record(n))
    await store.put(record(27, created_at=EPOCH + 5 * DAY))
    clock.now = EPOCH + RETENTION_DAYS * DAY + 100
    assert await store.sweep(3) == 3
    clock.now = EPOCH + 3600
    assert [await store.get("tenant-a", f"resp_{n}") is None for n in range(20, 27)] == [True] * 3 + [False] * 4
    clock.now = EPOCH + RETENTION_DAYS * DAY + 100
    assert [await store.sweep(3) for _ in range(3)] == [3, 1, 0]
    assert await store.get("tenant-a", "resp_27") is not None


async def test_with_no_retention_nothing_expires_or_is_swept(opener: Opener, clock: Clock) -> None:
    store = await opener(Retention(0, clock))
    await store.put(record(30))
    clock.now = EPOCH + 10 * 365 * DAY
    assert await store.sweep(100) == 0
    assert await store.get("tenant-a", "resp_30") is not None


async def test_stores_sharing_a_table_agree_on_expiry(opener: Opener, clock: Clock) -> None:
    """Two replicas (or workers) sweeping at once: each row goes once, the young ones stay."""
    first, second = await opener(Retention(RETENTION_DAYS, clock)), await opener(Retention(RETENTION_DAYS, clock))
    if isinstance(first, SQLiteResponseStore) and first.path == ":memory:":
        pytest.skip("an in-memory store is one process's own")
    await asyncio.gather(*(first.put(record(n, tenant=f"tenant-{n % 3}")) for n in range(40, 60)))
    await first.put(record(60, created_at=EPOCH + 3 * DAY))
    clock.now = EPOCH + RETENTION_DAYS * DAY + 100
    swept: list[int] = []
    for _ in range(20):  # until a round where neither finds anything
        round_ = await asyncio.gather(*(s.sweep(4) for s in (first, second, first, second)))
        swept += round_
        if not any(round_):
            break
    assert sum(swept) == 20, "every expired row deleted, none counted twice"
    assert await second.get("tenant-a", "resp_60") is not None


def test_the_store_follows_the_ledger(tmp_path: Path) -> None:
    def opened(**state: object) -> ResponseStore:
        return open_response_store(msgspec.convert({"state": state}, Config))

    beside = opened(ledger_path=str(tmp_path / "ledger.sqlite"))
    assert isinstance(beside, SQLiteResponseStore) and beside.path == str(tmp_path / "ledger.sqlite.responses")
    off = opened(ledger="off")
    assert isinstance(off, SQLiteResponseStore) and off.path == ":memory:"
    assert isinstance(opened(ledger="postgres", postgres_dsn="postgresql://u@h/db"), PostgresResponseStore)


def test_the_retention_comes_from_the_config() -> None:
    clock = Clock(EPOCH)

    def retention(**state: object) -> Retention:
        store = open_response_store(msgspec.convert({"state": {"ledger": "off", **state}}, Config), clock)
        assert isinstance(store, SQLiteResponseStore)
        return store.retention

    assert retention().cutoff() == EPOCH - 30 * DAY, "30 days unless configured"
    assert retention(responses_retention_days=7).cutoff() == EPOCH - 7 * DAY
    assert retention(responses_retention_days=0).cutoff() is None


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
                await conn.execute("INSERT INTO responses VALUES ($1, 'x', now(), ''::bytea, ''::bytea, ''::bytea)", rls.b)


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


async def test_the_sweep_under_an_ordinary_role_sees_every_tenants_expired_rows(rls: Rls) -> None:
    clock = Clock(EPOCH + 3600)
    store = PostgresResponseStore(rls.role_dsn, Retention(RETENTION_DAYS, clock))
    await store.start()
    try:
        await store.put(record(70, tenant=rls.a))
        await store.put(record(71, tenant=rls.b))
        await store.put(record(72, tenant=rls.b, created_at=EPOCH + DAY))
        clock.now = EPOCH + RETENTION_DAYS * DAY + 100
        owner = await asyncpg.connect(rls.owner_dsn)  # a superuser: counts past the policies
        expired = await owner.fetch(
            "SELECT DISTINCT tenant FROM responses WHERE created_at <= to_timestamp($1)", clock.now - RETENTION_DAYS * DAY
        )
        count = await owner.fetchval(
            "SELECT count(*) FROM responses WHERE created_at <= to_timestamp($1)", clock.now - RETENTION_DAYS * DAY
        )
        await owner.close()
        assert {r["tenant"] for r in expired} == {rls.a, rls.b}
        assert await store.sweep(100) == count, "bound to no one tenant, row-level security still shows the sweep every row"
        assert await store.get(rls.b, "resp_72") is not None
    finally:
        await store.close()
    async with as_role(rls) as conn, conn.transaction():
        await conn.execute("SELECT set_config('sluicegate.tenant', '*', true)")
        assert {r["id"] for r in await conn.fetch("SELECT id FROM responses WHERE id LIKE 'resp_7%'")} == {"resp_72"}


async def test_the_migration_indexes_created_at(pg_database: str | None) -> None:
    if pg_database is None:
        pytest.skip(NO_POSTGRES)
    await migrate(pg_database)
    conn = await asyncpg.connect(pg_database)
    try:
        indexes = await conn.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'responses'")
    finally:
        await conn.close()
    assert {r["indexname"]: r["indexdef"].split(" USING ")[1] for r in indexes}["responses_created"] == "btree (created_at)"
