"""Fixtures for the orchestrator: a Redis key prefix per test, a PostgreSQL database per module, both stores.

Redis keys go under a fresh prefix and are deleted afterwards; the PostgreSQL
store runs against a database created for the module and dropped at its end
(as tests/contract/test_batch_store.py does), migrated by the store itself.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from sluicegate_orchestrator import Orchestrator, PostgresTaskStore, SqliteTaskStore, Task, TaskStore, Worker

ADMIN_DSN = os.environ.get("SLUICEGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SLUICEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class FakeClock:
    """Seconds since the epoch that move only when told."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
async def pg_database() -> AsyncIterator[str | None]:
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        yield None
        return
    name = f"sg_orchestrator_{secrets.token_hex(6)}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, pg_database: str | None) -> AsyncIterator[TaskStore]:
    made: TaskStore
    if request.param == "postgres":
        if pg_database is None:
            pytest.skip("PostgreSQL is not reachable at SLUICEGATE_TEST_POSTGRES_DSN")
        made = PostgresTaskStore(pg_database, pool_size=8)
        await made.get(None, "task_" + "0" * 24)  # the first call creates the tables
        conn = await asyncpg.connect(pg_database)
        try:
            await conn.execute("TRUNCATE tasks, task_steps")
        finally:
            await conn.close()
    else:
        made = SqliteTaskStore(str(tmp_path / "tasks.sqlite"))
    yield made
    await made.close()


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, aioredis.ConnectionError):
        await client.aclose()
        pytest.skip("Redis is not reachable at SLUICEGATE_TEST_REDIS_URL")
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: aioredis.Redis) -> AsyncIterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    name = f"test-orchestrator-{secrets.token_hex(5)}"
    yield name
    async for key in redis.scan_iter(match=f"{name}*"):
        await redis.delete(key)


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float = 10.0, what: str = "condition") -> None:
    """Polls ``check`` until it holds; fails the test (not a timing assertion: a generous bound) if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout_s}s")


@pytest.fixture
def orchestrator(store: TaskStore, redis: aioredis.Redis, prefix: str) -> Orchestrator:
    return Orchestrator(store, redis, prefix=prefix)


@asynccontextmanager
async def running(worker: Worker, *, grace_s: float = 5.0) -> AsyncIterator[Worker]:
    worker.start()
    try:
        yield worker
    finally:
        await worker.stop(grace_s=grace_s)


async def reaches(orchestrator: Orchestrator, task: Task, status: str, *, timeout_s: float = 10.0) -> Task:
    async def check() -> bool:
        current = await orchestrator.get(task.tenant, task.id)
        return current is not None and current.status == status

    await eventually(check, timeout_s=timeout_s, what=f"task {task.id} reaching {status}")
    final = await orchestrator.get(task.tenant, task.id)
    assert final is not None
    return final


async def pending_zero(orchestrator: Orchestrator, *, stream_empty: bool = False) -> bool:
    queue = orchestrator.queue()
    if stream_empty and await orchestrator.redis.xlen(queue.stream) != 0:
        return False
    return await queue.pending_count() == 0


async def status_is(orchestrator: Orchestrator, task: Task, status: str) -> bool:
    current = await orchestrator.get(task.tenant, task.id)
    return current is not None and current.status == status
