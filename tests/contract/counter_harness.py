"""The counter-store contract suite's harnesses: each store on its own clock, and the plan helpers.

The memory store runs on a fake clock that moves only when told; Redis gets
real, short waits on the server's own clock; the cluster harness runs the Redis
store against a local three-shard cluster (``tests.redis_cluster``).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from budgets.store import (
    Admission,
    BudgetRule,
    CounterStore,
    Floors,
    LimitRule,
    Plan,
)
from budgets.store_memory import MemoryCounterStore
from budgets.store_redis import RedisCounterStore

REDIS_URL = os.environ.get("SLUICEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LONG_LEASE = 30_000


class MemoryHarness:
    def __init__(self) -> None:
        self.ms = 1_800_000_000_123
        self.store: CounterStore = MemoryCounterStore(clock=lambda: self.ms)

    async def now(self) -> int:
        return self.ms

    async def advance(self, ms: int) -> None:
        self.ms += ms

    async def window_start(self, window_ms: int) -> int:
        self.ms = (self.ms // window_ms + 1) * window_ms + 1
        return self.ms

    async def close(self) -> None:
        await self.store.close()


class RedisHarness:
    def __init__(self, url: str = REDIS_URL, cluster: bool = False) -> None:
        self.url, self.cluster = url, cluster
        self.prefix = f"sgtest-{uuid.uuid4().hex[:12]}:"
        self.redis_store = self.replica()
        self.store: CounterStore = self.redis_store
        self.client: aioredis.Redis | RedisCluster
        if cluster:
            self.client = RedisCluster.from_url(url, socket_timeout=2, socket_connect_timeout=1)
        else:
            self.client = aioredis.from_url(url, socket_timeout=2, socket_connect_timeout=1)

    def replica(self) -> RedisCounterStore:
        """Another replica's store on the same Redis and prefix."""
        return RedisCounterStore(self.url, prefix=self.prefix, cluster=self.cluster)

    async def now(self) -> int:
        seconds, micros = await self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def advance(self, ms: int) -> None:
        await asyncio.sleep(ms / 1000)

    async def window_start(self, window_ms: int) -> int:
        now = await self.now()
        await asyncio.sleep(((now // window_ms + 1) * window_ms - now + 5) / 1000)
        return await self.now()

    async def close(self) -> None:
        # Every shard's keys start with "{<prefix>"; deleted one by one, as they span slots.
        keys = [key async for key in self.client.scan_iter(match="{" + self.prefix + "*", count=500)]
        for key in keys:
            await self.client.delete(key)
        await self.store.close()
        await self.client.aclose()


Harness = MemoryHarness | RedisHarness


@pytest.fixture(params=["memory", "redis", "cluster"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """Each store behind one harness (also used by test_counter_claims)."""
    made: Harness
    if request.param == "memory":
        made = MemoryHarness()
    elif request.param == "redis":
        made = RedisHarness()
    else:
        made = RedisHarness(request.getfixturevalue("redis_cluster_url"), cluster=True)
    if not await made.store.ping():
        await made.close()
        pytest.skip(f"no Redis at {REDIS_URL}")
    yield made
    await made.close()


def plan(*rules: LimitRule | BudgetRule) -> Plan:
    return Plan(
        limits=tuple(r for r in rules if isinstance(r, LimitRule)),
        budgets=tuple(r for r in rules if isinstance(r, BudgetRule)),
    )


async def reserve(
    store: CounterStore,
    request_id: str,
    *rules: LimitRule | BudgetRule,
    tokens: int = 0,
    money: int = 0,
    lease_ms: int = LONG_LEASE,
    floors: Floors | None = None,
    now_ms: int | None = None,
) -> Admission:
    return await store.reserve(plan(*rules), request_id, tokens, money, lease_ms, floors, now_ms)


def money(key: str, limit: int, hard: bool = True, period_end_ms: int | None = None) -> BudgetRule:
    return BudgetRule(key, "money", limit, hard, period_end_ms)
