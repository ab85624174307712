"""One behaviour for both config stores: this process's (embedded) and PostgreSQL with Redis.

Each PostgreSQL test gets a database of its own, dropped at its end (the history
is append-only, so it cannot be emptied), and a Redis channel of its own.
PostgreSQL-only behaviour is in tests/integration/test_config_store_postgres.py.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import msgspec
import pytest

from core.config import LiveConfig
from core.config_version import ConfigVersion, VersionConflict, VersionNotFound, document_hash
from router.config_store import ConfigStore, MemoryConfigStore
from router.config_store_postgres import PostgresConfigStore

ADMIN_DSN = os.environ.get("SLUICEGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SLUICEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def document(n: int) -> LiveConfig:
    """A valid live document, different for each ``n``, touching most kinds of field."""
    raw = {
        "resilience": {"max_attempts": 1 + n % 10, "backoff_base_s": 0.05 * n},
        "deployments": [
            {
                "name": "stable", "provider": "openai", "model": f"gpt-{n}", "api_key": {"env": "OPENAI_KEY"},
                "price": {"input_per_mtok": 150 * n},
            },
            {"name": "next", "provider": "openai_compatible", "base_url": "http://10.0.0.1/v1", "model": "m", "options": {"x": [1, "y"]}},
        ],
        "models": [{"alias": "chat", "deployments": ["stable"], "canary": {"candidate": ["next"], "steps": [5.0, 100.0]}}],
        "tenants": [
            {
                "id": f"acme-{n}",
                "keys": [{"id": "k1", "hash": "hmac-sha256:" + "ab" * 32, "expires_at": "2031-02-03T04:05:06+00:00"}],
                "budgets": [{"kind": "money", "period": "monthly", "limit": 5_000_000}],
            }
        ],
    }
    return msgspec.convert(raw, LiveConfig)


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A database of its own, dropped at the end."""
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        pytest.skip("PostgreSQL is not reachable at SLUICEGATE_TEST_POSTGRES_DSN")
    name = f"sg_config_{secrets.token_hex(6)}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture(params=["memory", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ConfigStore]:
    if request.param == "memory":
        instance = MemoryConfigStore()
        await instance.start()
        yield instance
        await instance.close()
        return
    async with scratch_database() as dsn:
        pg = PostgresConfigStore(dsn, REDIS_URL, channel=f"sg:config:test:{secrets.token_hex(6)}")
        await pg.start()
        try:
            yield pg
        finally:
            await pg.close()


async def test_commit_latest_get_and_history_newest_first(store: ConfigStore) -> None:
    assert await store.latest() is None
    assert await store.history() == []
    records = [await store.commit(document(n), expected=n - 1, actor=f"ops/{n}", reason=f"change {n}") for n in range(1, 6)]
    assert [r.version for r in records] == [1, 2, 3, 4, 5]
    assert [(r.actor, r.reason) for r in records] == [(f"ops/{n}", f"change {n}") for n in range(1, 6)]
    assert await store.latest() == records[-1]
    assert await store.get(3) == records[2]

    summaries = [r.summary() for r in records]
    assert await store.history() == summaries[::-1]
    assert await store.history(2) == [summaries[4], summaries[3]]
    assert await store.history(2, before=4) == [summaries[2], summaries[1]]
    assert await store.history(10, before=2) == [summaries[0]]
    assert await store.history(10, before=1) == []
    assert await store.history(10, before=99) == summaries[::-1]
    assert await store.history(0) == []


async def test_a_stale_expected_version_conflicts_and_writes_nothing(store: ConfigStore) -> None:
    first = await store.commit(document(1), expected=0, actor="file", reason="initial")
    assert first.version == 1
    for stale in (0, 2, 7):
        with pytest.raises(VersionConflict, match="latest is 1"):
            await store.commit(document(2), expected=stale, actor="ops", reason="stale")
    assert await store.latest() == first
    assert (await store.commit(document(2), expected=1, actor="ops", reason="fresh")).version == 2
    assert (await store.commit(document(3), expected=None, actor="ops", reason="unchecked")).version == 3
    assert [s.version for s in await store.history()] == [3, 2, 1]


async def test_concurrent_writers_with_the_same_expected_one_wins(store: ConfigStore) -> None:
    await store.commit(document(0), expected=0, actor="file", reason="initial")
    results = await asyncio.gather(
        *(store.commit(document(n), expected=1, actor=f"writer-{n}", reason="race") for n in range(1, 6)), return_exceptions=True
    )
    won = [r for r in results if isinstance(r, ConfigVersion)]
    assert len(won) == 1 and won[0].version == 2
    assert all(isinstance(r, VersionConflict) for r in results if r is not won[0])
    assert await store.latest() == won[0]

    unchecked = await asyncio.gather(*(store.commit(document(n), expected=None, actor="w", reason="") for n in range(5)))
    assert sorted(r.version for r in unchecked) == [3, 4, 5, 6, 7]
    assert [s.version for s in await store.history()] == [7, 6, 5, 4, 3, 2, 1]


async def test_listeners_hear_each_commit_once(store: ConfigStore) -> None:
    heard: list[tuple[int, str]] = []
    store.listen(lambda version, digest: heard.append((version, digest)))
    records = [await store.commit(document(n), expected=None, actor="ops", reason="") for n in range(3)]
    assert heard == [(r.version, r.hash) for r in records]  # told before commit returns
    await asyncio.sleep(0.3)  # time for an echo through Redis, which must not be told again
    assert heard == [(r.version, r.hash) for r in records]


async def test_the_document_round_trips_and_its_hash_is_the_content_hash(store: ConfigStore) -> None:
    doc = document(4)
    before = time.time()
    record = await store.commit(doc, expected=None, actor="ops", reason="round trip")
    assert record.hash == document_hash(doc) and record.document == doc
    assert before - 5 <= record.created_at <= time.time() + 5
    for read in (await store.get(record.version), await store.latest()):
        assert read is not None
        assert read == record and read.document == doc and document_hash(read.document) == record.hash
    again = await store.commit(document(4), expected=None, actor="ops", reason="same again")
    assert again.hash == record.hash and again.version == record.version + 1


async def test_an_unknown_version_is_not_found(store: ConfigStore) -> None:
    for version in (1, 0, -1):
        with pytest.raises(VersionNotFound):
            await store.get(version)
    await store.commit(document(1), expected=0, actor="ops", reason="")
    assert (await store.get(1)).version == 1
    for version in (2, 0, 2**70):
        with pytest.raises(VersionNotFound):
            await store.get(version)
