"""One behaviour for both canary sample stores: in-process and Redis.

Each harness gives two stores that stand for two replicas: what both flush,
either reads, summed. Redis runs for real; keys carry a per-test prefix.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import suppress

import pytest
import redis.asyncio as aioredis

from policies.canary_samples import (
    BOUNDS,
    MemorySampleStore,
    RedisSampleStore,
    Sample,
    SampleStore,
    SamplesUnavailable,
    bucket,
)

REDIS_URL = os.environ.get("SLUICEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_PORT = 6379


class Replicas:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.prefix = f"sgtest-canary-{uuid.uuid4().hex[:12]}:"
        self.a: SampleStore
        self.b: SampleStore
        if kind == "memory":
            first = MemorySampleStore()
            self.a, self.b = first, MemorySampleStore(share_with=first)
        else:
            self.a, self.b = RedisSampleStore(REDIS_URL), RedisSampleStore(REDIS_URL)

    def key(self, name: str = "step") -> str:
        return self.prefix + name

    async def flush(self) -> None:
        await self.a.flush()
        await self.b.flush()

    async def close(self) -> None:
        await self.a.close()
        await self.b.close()
        if self.kind == "redis":
            client = aioredis.from_url(REDIS_URL)
            keys = [key async for key in client.scan_iter(match=self.prefix + "*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def replicas(request: pytest.FixtureRequest) -> AsyncIterator[Replicas]:
    pair = Replicas(request.param)
    yield pair
    await pair.close()


def ok(arm: str, latency_ms: float = 50.0, ttft_ms: float | None = None, cost: int = 0) -> Sample:
    return Sample(arm, True, latency_ms, ttft_ms, cost)  # type: ignore[arg-type]


def failed(arm: str, cost: int = 0) -> Sample:
    return Sample(arm, False, 30_000.0, None, cost)  # type: ignore[arg-type]


async def test_two_replicas_read_the_sum(replicas: Replicas) -> None:
    key = replicas.key()
    for sample in (ok("stable", cost=100), ok("stable", cost=100), ok("candidate", cost=300), failed("candidate", cost=7)):
        replicas.a.record(key, sample)
    for sample in (ok("stable", cost=100), failed("stable"), ok("candidate", cost=300)):
        replicas.b.record(key, sample)
    await replicas.flush()
    for store in (replicas.a, replicas.b):
        stats = await store.read(key)
        assert (stats.stable.requests, stats.stable.errors, stats.stable.cost_pico) == (4, 1, 300)
        assert (stats.candidate.requests, stats.candidate.errors, stats.candidate.cost_pico) == (3, 1, 607)
        assert stats.candidate.error_rate == pytest.approx(1 / 3)
        assert stats.candidate.cost_per_request == pytest.approx(607 / 3)
        # Failed requests count as errors, not as latencies.
        assert sum(stats.stable.latency) == 3


async def test_p95_comes_from_the_merged_histogram(replicas: Replicas) -> None:
    key = replicas.key()
    for _ in range(90):
        replicas.a.record(key, ok("candidate", latency_ms=10, ttft_ms=5))
    for _ in range(10):
        replicas.b.record(key, ok("candidate", latency_ms=1_000, ttft_ms=400))
    await replicas.flush()
    stats = (await replicas.a.read(key)).candidate
    # Alone, replica a's p95 would be ~10 ms; merged, rank 95 of 100 lies among b's samples.
    assert stats.p95_latency_ms == BOUNDS[bucket(1_000)]
    assert 1_000 <= stats.p95_latency_ms < 1_200
    assert stats.p95_ttft_ms == BOUNDS[bucket(400)]
    assert stats.ttft_samples == 100


async def test_keys_are_separate_and_an_unknown_key_is_empty(replicas: Replicas) -> None:
    replicas.a.record(replicas.key("one"), ok("stable"))
    replicas.b.record(replicas.key("two"), ok("candidate"))
    await replicas.flush()
    one = await replicas.b.read(replicas.key("one"))
    assert (one.stable.requests, one.candidate.requests) == (1, 0)
    empty = await replicas.a.read(replicas.key("never"))
    assert (empty.stable.requests, empty.candidate.requests) == (0, 0)
    assert empty.candidate.p95_latency_ms is None
    assert empty.candidate.p95_ttft_ms is None
    assert empty.candidate.error_rate == 0.0


async def test_close_flushes_what_is_left(replicas: Replicas) -> None:
    key = replicas.key()
    replicas.a.record(key, ok("candidate"))
    await replicas.a.close()
    assert (await replicas.b.read(key)).candidate.requests == 1


# --- Redis only -------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_background_flush_and_ttl() -> None:
    key = f"sgtest-canary-{uuid.uuid4().hex[:12]}:step"
    writer = RedisSampleStore(REDIS_URL, ttl_s=120, flush_interval_s=0.05)
    reader = RedisSampleStore(REDIS_URL)
    client = aioredis.from_url(REDIS_URL)
    try:
        await writer.start()
        writer.record(key, ok("candidate"))
        for _ in range(100):
            if (await reader.read(key)).candidate.requests == 1:
                break
            await asyncio.sleep(0.02)
        assert (await reader.read(key)).candidate.requests == 1
        assert 0 < await client.ttl(key) <= 120
    finally:
        await writer.close()
        await reader.close()
        await client.delete(key)
        await client.aclose()


async def test_unreachable_redis_never_raises_on_record_or_flush() -> None:
    store = RedisSampleStore(f"redis://127.0.0.1:{closed_port()}/0", timeout_s=0.5, max_buffered_keys=2)
    await store.start()
    for key in ("k1", "k1", "k2"):
        store.record(key, ok("stable"))
    await store.flush()
    await store.flush()
    assert store.buffered == 3
    store.record("k3", ok("stable"))  # a third key: beyond the cap
    assert store.dropped == 1
    with pytest.raises(SamplesUnavailable):
        await store.read("k1")
    await store.close()


class FlakyProxy:
    """A TCP proxy to Redis that drops every connection while it is down."""

    def __init__(self) -> None:
        self.up = False
        self.server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if not self.up:
            client_w.close()
            return
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", REDIS_PORT)
        for task in (self._pipe(client_r, redis_w), self._pipe(redis_r, client_w)):
            self._pipes.add(asyncio.create_task(task))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def close(self) -> None:
        for task in self._pipes:
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self.server is not None:
            self.server.close()


async def test_a_failed_flush_keeps_its_counts_for_the_next() -> None:
    key = f"sgtest-canary-{uuid.uuid4().hex[:12]}:step"
    proxy = FlakyProxy()
    port = await proxy.start()
    store = RedisSampleStore(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
    reader = RedisSampleStore(REDIS_URL)
    try:
        store.record(key, ok("candidate", latency_ms=20))
        store.record(key, failed("candidate"))
        await store.flush()  # Redis is unreachable: counts stay
        store.record(key, ok("stable"))
        await store.flush()
        assert store.buffered == 3
        assert (await reader.read(key)).candidate.requests == 0
        proxy.up = True
        await store.flush()
        assert store.buffered == 0
        stats = await reader.read(key)
        assert (stats.candidate.requests, stats.candidate.errors, stats.stable.requests) == (2, 1, 1)
        assert stats.candidate.p95_latency_ms == BOUNDS[bucket(20)]
    finally:
        await store.close()
        await reader.close()
        await proxy.close()
        client = aioredis.from_url(REDIS_URL)
        await client.delete(key)
        await client.aclose()
