"""One behaviour for both vector indexes of the semantic cache: in-process and pgvector.

Both run on a clock that moves only when told (``expires_at`` is compared with
it). The PostgreSQL index gets a scratch database of its own on the server of
the ``pgvector_dsn`` fixture (tests/conftest.py: a bundled PostgreSQL with
pgvector where no other is at hand), dropped at the end. Below the contract:
what only one of them does (memory is bounded in entries; a database that is
down is a fast miss, logged once).
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from router.semantic_index import VectorIndex
from router.semantic_index_memory import MemoryVectorIndex
from router.semantic_index_pg import PgVectorIndex

NOW = 1_700_000_000.0
LATER = NOW + 300
THRESHOLD = 0.95
SCOPE = "tenant-a"
PARTITION = "chat-alias|dep-1@v3|chat"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
async def pg_database(pgvector_dsn: str) -> AsyncIterator[str]:
    """A scratch database with the `vector` extension, dropped at the end."""
    admin = await asyncpg.connect(pgvector_dsn, timeout=5)
    name = f"sg_semantic_{secrets.token_hex(6)}"
    await admin.execute(f"CREATE DATABASE {name}")
    dsn = f"{pgvector_dsn.rsplit('/', 1)[0]}/{name}"
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        finally:
            await conn.close()
        yield dsn
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


class Harness:
    def __init__(self, index: VectorIndex, clock: Clock) -> None:
        self.index = index
        self.clock = clock


@pytest.fixture
async def memory_harness() -> AsyncIterator[Harness]:
    clock = Clock()
    index = MemoryVectorIndex(max_entries=1000, clock=clock)
    yield Harness(index, clock)
    await index.close()


@pytest.fixture
async def postgres_harness(pg_database: str) -> AsyncIterator[Harness]:
    clock = Clock()
    index = PgVectorIndex(pg_database, timeout_s=5.0, clock=clock)
    # Each test starts from an empty table (created by the index's first call if missing).
    await index.delete_expired()
    conn = await asyncpg.connect(pg_database, timeout=5)
    try:
        await conn.execute("TRUNCATE semantic_cache_index")
    finally:
        await conn.close()
    yield Harness(index, clock)
    await index.close()


@pytest.fixture(params=["memory", "postgres"])
def harness(request: pytest.FixtureRequest) -> Harness:
    # Looked up by name so that the memory half never asks for a PostgreSQL server.
    found: Harness = request.getfixturevalue(f"{request.param}_harness")
    return found


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_near_vector_hits_and_a_far_one_misses(harness: Harness) -> None:
    await harness.index.add(SCOPE, PARTITION, [1.0, 0.0, 0.0], "k-a", LATER)
    found = await harness.index.nearest(SCOPE, PARTITION, [0.99, 0.05, 0.0], THRESHOLD)
    assert found is not None
    assert found[0] == "k-a"
    assert THRESHOLD <= found[1] <= 1.0
    assert await harness.index.nearest(SCOPE, PARTITION, [0.5, 0.5, 0.5], THRESHOLD) is None
    assert await harness.index.nearest(SCOPE, PARTITION, [-1.0, 0.0, 0.0], THRESHOLD) is None


async def test_vectors_are_normalised(harness: Harness) -> None:
    await harness.index.add(SCOPE, PARTITION, [10.0, 0.0], "k-a", LATER)
    found = await harness.index.nearest(SCOPE, PARTITION, [0.001, 0.0], 0.999)
    assert found is not None
    assert found[0] == "k-a"
    assert found[1] == pytest.approx(1.0, abs=1e-6)


async def test_another_scope_never_hits_even_the_same_vector(harness: Harness) -> None:
    await harness.index.add(SCOPE, PARTITION, [0.3, 0.4, 0.5], "k-a", LATER)
    assert await harness.index.nearest("tenant-b", PARTITION, [0.3, 0.4, 0.5], -1.0) is None
    assert await harness.index.nearest(SCOPE, PARTITION, [0.3, 0.4, 0.5], THRESHOLD) is not None


async def test_another_partition_never_hits(harness: Harness) -> None:
    await harness.index.add(SCOPE, PARTITION, [0.3, 0.4, 0.5], "k-a", LATER)
    assert await harness.index.nearest(SCOPE, "chat-alias|dep-1@v4|chat", [0.3, 0.4, 0.5], -1.0) is None
    assert await harness.index.nearest(SCOPE, "other-alias|dep-1@v3|chat", [0.3, 0.4, 0.5], -1.0) is None


async def test_another_dimension_is_a_miss_not_an_error(harness: Harness) -> None:
    await harness.index.add(SCOPE, PARTITION, [0.3, 0.4, 0.5], "k-a", LATER)
    assert await harness.index.nearest(SCOPE, PARTITION, [0.3, 0.4, 0.5, 0.0], -1.0) is None
    await harness.index.add(SCOPE, PARTITION, [0.3, 0.4, 0.5, 0.0], "k-b", LATER)
    assert (await harness.index.nearest(SCOPE, PARTITION, [0.3, 0.4, 0.5, 0.0], THRESHOLD) or ("",))[0] == "k-b"
    assert (await harness.index.nearest(SCOPE, PARTITION, [0.3, 0.4, 0.5], THRESHOLD) or ("",))[0] == "k-a"


async def test_the_best_of_several_candidates_is_returned(harness: Harness) -> None:
    await harness.index.add(SCOPE, PARTITION, [1.0, 0.2, 0.0], "k-far", LATER)
    await harness.index.add(SCOPE, PARTITION, [1.0, 0.05, 0.0], "k-best", LATER)
    await harness.index.add(SCOPE, PARTITION, [1.0, 0.1, 0.0], "k-near", LATER)
    await harness.index.add("tenant-b", PARTITION, [1.0, 0.0, 0.0], "k-other-tenant", LATER)
    found = await harness.index.nearest(SCOPE, PARTITION, [1.0, 0.0, 0.0], 0.9)
    assert found is not None
    assert found[0] == "k-best"


async def test_expired_entries_never_hit_and_are_swept(harness: Harness) -> None:
    await harness.index.add(SCOPE, PARTITION, [1.0, 0.0], "k-short", NOW + 10)
    await harness.index.add(SCOPE, PARTITION, [1.0, 0.1], "k-long", NOW + 100)
    assert (await harness.index.nearest(SCOPE, PARTITION, [1.0, 0.0], THRESHOLD) or ("",))[0] == "k-short"
    harness.clock.now = NOW + 10
    assert (await harness.index.nearest(SCOPE, PARTITION, [1.0, 0.0], THRESHOLD) or ("",))[0] == "k-long"
    harness.clock.now = NOW + 100
    assert await harness.index.nearest(SCOPE, PARTITION, [1.0, 0.0], -1.0) is None
    await harness.index.add(SCOPE, PARTITION, [0.0, 1.0], "k-live", NOW + 200)
    assert await harness.index.delete_expired() in (0, 1, 2)  # memory already dropped what its search met
    assert await harness.index.delete_expired() == 0
    assert (await harness.index.nearest(SCOPE, PARTITION, [0.0, 1.0], THRESHOLD) or ("",))[0] == "k-live"


async def test_add_replaces_and_delete_forgets(harness: Harness) -> None:
    await harness.index.add(SCOPE, PARTITION, [1.0, 0.0], "k-a", LATER)
    await harness.index.add("tenant-b", PARTITION, [0.0, 1.0], "k-a", LATER)
    assert await harness.index.nearest(SCOPE, PARTITION, [1.0, 0.0], -1.0) is None
    assert (await harness.index.nearest("tenant-b", PARTITION, [0.0, 1.0], THRESHOLD) or ("",))[0] == "k-a"
    await harness.index.delete("k-a")
    await harness.index.delete("k-absent")
    assert await harness.index.nearest("tenant-b", PARTITION, [0.0, 1.0], -1.0) is None


@pytest.mark.parametrize("vector", [[], [0.0, 0.0], [float("nan"), 1.0], [float("inf"), 1.0]])
async def test_a_vector_without_a_direction_is_refused(harness: Harness, vector: list[float]) -> None:
    with pytest.raises(ValueError):
        await harness.index.add(SCOPE, PARTITION, vector, "k-a", LATER)
    with pytest.raises(ValueError):
        await harness.index.nearest(SCOPE, PARTITION, vector, THRESHOLD)


async def test_a_threshold_outside_cosine_is_refused(harness: Harness) -> None:
    with pytest.raises(ValueError):
        await harness.index.nearest(SCOPE, PARTITION, [1.0], 1.5)


# --- what only one of them does ------------------------------------------------


async def test_memory_is_bounded_oldest_dropped_first() -> None:
    clock = Clock()
    index = MemoryVectorIndex(max_entries=3, clock=clock)
    for n in range(5):
        await index.add(SCOPE, PARTITION, [1.0, float(n)], f"k-{n}", LATER)
    assert len(index) == 3
    assert await index.nearest(SCOPE, PARTITION, [1.0, 0.0], 0.99) is None
    assert await index.nearest(SCOPE, PARTITION, [1.0, 1.0], 0.99) is None
    assert (await index.nearest(SCOPE, PARTITION, [1.0, 4.0], 0.99) or ("",))[0] == "k-4"
    # Replacing a key makes it the newest.
    await index.add(SCOPE, PARTITION, [1.0, 2.0], "k-2", LATER)
    await index.add(SCOPE, PARTITION, [1.0, 5.0], "k-5", LATER)
    assert (await index.nearest(SCOPE, PARTITION, [1.0, 2.0], 0.9999) or ("",))[0] == "k-2"
    assert await index.nearest(SCOPE, PARTITION, [1.0, 3.0], 0.9999) is None


async def test_a_database_that_is_down_is_a_fast_miss_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    index = PgVectorIndex(f"postgresql://postgres@127.0.0.1:{closed_port()}/test", timeout_s=1.0, retry_after_s=60)
    caplog.set_level(logging.WARNING, logger="sluicegate.semantic_cache")
    started = time.monotonic()
    for _ in range(20):
        assert await index.nearest(SCOPE, PARTITION, [1.0, 0.0], THRESHOLD) is None
        await index.add(SCOPE, PARTITION, [1.0, 0.0], "k-a", LATER)
        await index.delete("k-a")
        assert await index.delete_expired() == 0
    assert time.monotonic() - started < 1.0
    warnings = [r for r in caplog.records if "semantic cache index failed" in r.getMessage()]
    assert len(warnings) == 1
    assert "k-a" not in caplog.text
    await index.close()
