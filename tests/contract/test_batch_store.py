"""One behaviour for both batch stores: the local directory and PostgreSQL (asyncpg).

The PostgreSQL store runs against a database created for this module and
dropped at its end, migrated by the store itself on first use. "Two
replicas" are two store objects on the same directory or database. Below the
contract: PostgreSQL-only behaviour (row-level security binds an ordinary
role, the lease claims, a silent server).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import msgspec
import pytest

from budgets.migrate import migrate
from core.config import Config
from router.batch_claims import LocalClaims, PostgresClaims, RedisClaims
from router.batch_records import ACTIVE, BatchRecord, BatchStore, BatchStoreUnavailable, RequestCounts
from router.batch_state import BatchConflict, cancel_requested, counted, failed, finished, new_record, validated
from router.batch_store import LocalBatchStore
from router.batch_store_postgres import ACTIVE_SQL, PostgresBatchStore
from router.state_batches import open_batch_store, open_claims
from tests.fakes.blackhole import BlackHole
from tests.integration.rls_scratch import Rls, as_role, scratch

ADMIN_DSN = os.environ.get("SLUICEGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
NO_POSTGRES = "PostgreSQL is not reachable at SLUICEGATE_TEST_POSTGRES_DSN"
T0 = 1_700_000_000.0
StoreFactory = Callable[[], BatchStore]


def record(tenant: str = "acme", created_ns: int = 1) -> BatchRecord:
    return new_record(
        tenant, "key-1", endpoint="/v1/chat/completions", input_file_id="file-in", metadata={"k": "v"},
        output_expires_after_s=3600, now=T0, created_ns=created_ns,
    )  # fmt: skip


def bump(current: BatchRecord) -> BatchRecord:
    counts = current.batch.request_counts
    return counted(current, RequestCounts(counts.total, counts.completed + 1, counts.failed))


@pytest.fixture(scope="module")
async def pg_database() -> AsyncIterator[str | None]:
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        yield None
        return
    name = f"sg_batches_{secrets.token_hex(6)}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture(params=["local", "postgres"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path, pg_database: str | None) -> AsyncIterator[StoreFactory]:
    """``make_store()``: another replica's store on the same (emptied) directory or database."""
    made: list[BatchStore] = []
    if request.param == "postgres":
        if pg_database is None:
            pytest.skip(NO_POSTGRES)
        first = PostgresBatchStore(pg_database, pool_size=8)
        await first.active()  # the store creates its tables on this first call
        conn = await asyncpg.connect(pg_database)
        await conn.execute("TRUNCATE batches, batch_parts")
        await conn.close()
        await first.close()

    def factory() -> BatchStore:
        store: BatchStore = (
            LocalBatchStore(str(tmp_path)) if request.param == "local" else PostgresBatchStore(pg_database or "", pool_size=8)
        )
        made.append(store)
        return store

    yield factory
    for store in made:
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> BatchStore:
    made = make_store()
    await made.start()
    return made


async def test_a_batch_reads_back_as_created_and_is_its_tenants_only(store: BatchStore) -> None:
    mine = record()
    await store.create(mine)
    assert await store.get("acme", mine.batch.id) == mine
    assert await store.get("globex", mine.batch.id) is None
    assert await store.update("globex", mine.batch.id, lambda r: cancel_requested(r, T0)) is None
    assert await store.page("globex", after=None, limit=10) == ([], False)
    kept = await store.get("acme", mine.batch.id)
    assert kept is not None and kept.batch.status == "validating", "another tenant's cancel must not land"
    for bad in ("batch_missing", "../x", "batch_../../x", "file-1", ""):
        assert await store.get("acme", bad) is None
        assert await store.update("acme", bad, bump) is None


async def test_pages_are_newest_first_and_follow_the_cursor(store: BatchStore) -> None:
    mine = [record("acme", created_ns=i) for i in range(5)]
    for r in mine:
        await store.create(r)
    await store.create(record("globex", created_ns=9))
    newest_first = [r.batch.id for r in reversed(mine)]
    page, more = await store.page("acme", after=None, limit=2)
    assert [r.batch.id for r in page] == newest_first[:2] and more
    page, more = await store.page("acme", after=page[-1].batch.id, limit=2)
    assert [r.batch.id for r in page] == newest_first[2:4] and more
    page, more = await store.page("acme", after=page[-1].batch.id, limit=2)
    assert [r.batch.id for r in page] == newest_first[4:] and not more
    assert await store.page("acme", after="batch_unknown", limit=2) == ([], False)
    assert (await store.page("acme", after=None, limit=5))[1] is False


async def test_only_unfinished_batches_are_active(store: BatchStore) -> None:
    a, b, c = record(), record(), record("globex")
    for r in (a, b, c):
        await store.create(r)
    assert sorted(await store.active()) == sorted([("acme", a.batch.id), ("acme", b.batch.id), ("globex", c.batch.id)])
    await store.update("acme", a.batch.id, lambda r: failed(r, [], T0))
    await store.update("globex", c.batch.id, lambda r: validated(r, 3, T0))
    assert sorted(await store.active()) == sorted([("acme", b.batch.id), ("globex", c.batch.id)])


async def test_concurrent_updates_from_two_replicas_lose_nothing(make_store: StoreFactory) -> None:
    one, two = make_store(), make_store()
    r = validated(record(), 100, T0)
    await one.create(r)
    await asyncio.gather(*(store.update("acme", r.batch.id, bump) for _ in range(15) for store in (one, two)))
    kept = await two.get("acme", r.batch.id)
    assert kept is not None and kept.batch.request_counts.completed == 30


async def test_a_cancel_racing_with_progress_keeps_both(make_store: StoreFactory) -> None:
    runner, api = make_store(), make_store()
    r = validated(record(), 100, T0)
    await runner.create(r)

    async def cancel_midway() -> BatchRecord | None:
        await asyncio.sleep(0.01)
        return await api.update("acme", r.batch.id, lambda current: cancel_requested(current, T0 + 5))

    progress = [runner.update("acme", r.batch.id, bump) for _ in range(20)]
    results = await asyncio.gather(cancel_midway(), *progress)
    assert results[0] is not None and results[0].batch.status == "cancelling"
    kept = await runner.get("acme", r.batch.id)
    assert kept is not None
    assert (kept.batch.status, kept.batch.cancelling_at, kept.batch.request_counts.completed) == ("cancelling", int(T0) + 5, 20)
    # the runner's end sees the cancel: the batch ends cancelled, not completed
    files = ("file-out", None)
    ended = await runner.update("acme", r.batch.id, lambda c: finished(c, c.batch.request_counts, files, T0 + 9, ran_out=False))
    assert ended is not None and ended.batch.status == "cancelled" and ended.batch.output_file_id == "file-out"
    assert await runner.active() == []


async def test_a_refused_change_leaves_the_record_and_the_store_as_they_were(store: BatchStore) -> None:
    r = record()
    await store.create(r)
    await store.update("acme", r.batch.id, lambda c: failed(c, [], T0))
    with pytest.raises(BatchConflict):
        await store.update("acme", r.batch.id, lambda c: cancel_requested(c, T0))
    kept = await store.get("acme", r.batch.id)
    assert kept is not None and kept.batch.status == "failed"
    assert await store.update("acme", r.batch.id, lambda c: c) == kept  # no change: nothing written, the store still answers


async def test_result_lines_append_in_order_and_a_cut_line_stays_on_its_own(store: BatchStore) -> None:
    r = record()
    await store.create(r)

    async def read(tenant: str, part: str = "output") -> bytes:
        return b"".join([chunk async for chunk in store.read(tenant, r.batch.id, part)])  # type: ignore[arg-type]

    assert await read("acme") == b""
    await store.append("acme", r.batch.id, "output", b'{"custom_id":"a"}\n{"custom_id":"b"')  # a crash mid-line
    await store.append("acme", r.batch.id, "output", b'{"custom_id":"c"}\n')
    await store.append("acme", r.batch.id, "error", b'{"custom_id":"e"}\n')
    for i in range(70):  # more appends than one round trip reads
        await store.append("acme", r.batch.id, "output", b'{"custom_id":"n%d"}\n' % i)
    lines = (await read("acme")).split(b"\n")
    assert lines[:3] == [b'{"custom_id":"a"}', b'{"custom_id":"b"', b'{"custom_id":"c"}']
    assert lines[3:] == [b'{"custom_id":"n%d"}' % i for i in range(70)] + [b""]
    assert await read("acme", "error") == b'{"custom_id":"e"}\n'
    assert await read("globex") == b""
    await store.drop_parts("globex", r.batch.id)
    assert await read("acme", "error") != b"", "another tenant's drop must not remove them"
    await store.drop_parts("acme", r.batch.id)
    assert await read("acme") == b"" and await read("acme", "error") == b""


def test_the_store_and_claims_follow_state_batches(tmp_path: Path) -> None:
    def opened(**state: object) -> Config:
        return msgspec.convert({"state": state}, Config)

    local = opened(files_path=str(tmp_path))
    assert isinstance(open_batch_store(local), LocalBatchStore)
    assert isinstance(open_claims(local, open_batch_store(local)), LocalClaims)
    with_redis = opened(files_path=str(tmp_path), redis_url="redis://127.0.0.1:6379/0")
    assert isinstance(open_claims(with_redis, open_batch_store(with_redis)), RedisClaims)
    shared = opened(batches="postgres", postgres_dsn="postgresql://u@h/db", redis_url="redis://127.0.0.1:6379/0")
    store = open_batch_store(shared)
    assert isinstance(store, PostgresBatchStore) and isinstance(open_claims(shared, store), PostgresClaims)
    assert {s.strip("'") for s in ACTIVE_SQL.strip("()").split(", ")} == ACTIVE


# --- PostgreSQL only ------------------------------------------------------------------

GRANTS = """
GRANT SELECT, INSERT, UPDATE, DELETE ON batches, batch_parts TO {role};
GRANT USAGE ON SEQUENCE batch_parts_seq_seq TO {role};
GRANT SELECT ON schema_migrations TO {role};
"""


async def _prepare(owner_dsn: str, a: str, b: str) -> None:
    await migrate(owner_dsn)


@pytest.fixture(scope="module")
async def rls() -> AsyncIterator[Rls]:
    async with scratch("sg_batches_rls", GRANTS, _prepare) as env:
        yield env


async def test_row_level_security_binds_the_store_and_the_tables(rls: Rls) -> None:
    store = PostgresBatchStore(rls.role_dsn)
    a, b = record(rls.a), record(rls.b)
    try:
        await store.create(a)
        await store.create(b)
        await store.append(rls.a, a.batch.id, "output", b'{"custom_id":"x"}\n')
        assert await store.get(rls.a, a.batch.id) == a and await store.get(rls.a, b.batch.id) is None
        assert sorted(await store.active()) == sorted([(rls.a, a.batch.id), (rls.b, b.batch.id)])
        claims = PostgresClaims(store.calls, ttl_s=30)
        assert await claims.claim(b.batch.id)
        await claims.release(b.batch.id, True)
    finally:
        await store.close()
    async with as_role(rls) as conn:
        assert await conn.fetchval("SELECT count(*) FROM batches") == 0, "unscoped, the table looks empty"
        assert await conn.fetchval("SELECT count(*) FROM batch_parts") == 0
        async with conn.transaction():
            await conn.execute("SELECT set_config('sluicegate.tenant', $1, true)", rls.a)
            assert [r["id"] for r in await conn.fetch("SELECT id FROM batches")] == [a.batch.id]
            assert await conn.fetchval("SELECT count(*) FROM batch_parts") == 1
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("INSERT INTO batch_parts (tenant, batch_id, part, lines) VALUES ($1, 'batch_x', 'output', '')", rls.b)


async def test_a_lease_is_held_by_one_replica_and_lapses(pg_database: str | None) -> None:
    if pg_database is None:
        pytest.skip(NO_POSTGRES)
    store = PostgresBatchStore(pg_database)
    r = record()
    await store.create(r)
    one, two = PostgresClaims(store.calls, ttl_s=1.0), PostgresClaims(store.calls, ttl_s=1.0)
    batch_id = r.batch.id
    try:
        assert await one.claim(batch_id) and await one.claim(batch_id)  # taken, then renewed
        assert not await two.claim(batch_id)
        await two.release(batch_id, False)  # not two's: left alone
        assert not await two.claim(batch_id)
        await one.release(batch_id, False)
        assert await two.claim(batch_id)
        await asyncio.sleep(1.2)  # two stopped renewing: the lease lapsed
        assert await one.claim(batch_id)
        assert not await one.claim("batch_unknown")
    finally:
        await store.close()


async def test_a_silent_server_fails_a_call_within_its_deadline(pg_database: str | None) -> None:
    if pg_database is None:
        pytest.skip(NO_POSTGRES)
    host, _, port = pg_database.split("@", 1)[1].split("/", 1)[0].partition(":")
    hole = BlackHole(host, int(port or 5432))
    hole.start()
    try:
        store = PostgresBatchStore(f"postgresql://postgres@{hole.dsn_host}/{pg_database.rsplit('/', 1)[1]}", timeout_s=0.5)
        await store.active()  # connected and migrated through the proxy
        claims = PostgresClaims(store.calls, ttl_s=30)
        hole.swallow()
        started = time.monotonic()
        with pytest.raises(BatchStoreUnavailable):
            await store.get("acme", "batch_x")
        assert time.monotonic() - started < 2.0
        assert not await claims.claim("batch_x"), "a claim that cannot be asked is not held"
        await store.close()
    finally:
        hole.close()
