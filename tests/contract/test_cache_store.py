"""One behaviour for both response cache stores: in-process and Redis.

Each harness gives the suite the same handles: time (the memory store runs on
a clock that moves only when told; Redis gets real, short waits, its keys
expiring by ``PX``) and a way to write garbage where an entry lives. Each
Redis store gets a prefix of its own, its keys deleted at the end. Below the
contract: what only one of them does (memory evicts the least recently used
by bytes; Redis compresses, and a Redis that is down, silent or gone is a
fast miss, logged once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from router.cache_key import cache_key
from router.cache_store import ZLIB, CacheEntry, CacheStore, encode_entry, frame
from router.cache_store_memory import ENTRY_OVERHEAD, MemoryCacheStore
from router.cache_store_redis import RedisCacheStore
from serving.base import make_usage
from tests.fakes.blackhole import BlackHole

REDIS_URL = os.environ.get("SLUICEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_HOST, REDIS_PORT = REDIS_URL.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
MAX_ENTRY_BYTES = 64 * 1024
KEY = "0" * 64


class MemoryHarness:
    def __init__(self) -> None:
        self.now = 1000.0
        self.memory = MemoryCacheStore(max_bytes=1024 * 1024, max_entry_bytes=MAX_ENTRY_BYTES, clock=lambda: self.now)
        self.store: CacheStore = self.memory

    async def advance(self, seconds: float) -> None:
        self.now += seconds

    async def write_raw(self, key: str, value: bytes) -> None:
        # The store has no door for raw bytes: garbage goes straight where its entries live.
        self.memory._entries[key] = (value, self.now + 60)

    async def holds(self, key: str) -> bool:
        return key in self.memory._entries

    async def close(self) -> None:
        await self.store.close()


class RedisHarness:
    def __init__(self) -> None:
        self.redis = RedisCacheStore(REDIS_URL, prefix=f"sgtest-{uuid.uuid4().hex[:12]}:", max_entry_bytes=MAX_ENTRY_BYTES, timeout_s=1.0)
        self.store: CacheStore = self.redis
        self.client = aioredis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=1)

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def write_raw(self, key: str, value: bytes) -> None:
        await self.client.set(self.redis.key_prefix + key, value, px=60_000)

    async def holds(self, key: str) -> bool:
        return bool(await self.client.exists(self.redis.key_prefix + key))

    async def close(self) -> None:
        keys = [key async for key in self.client.scan_iter(match=self.redis.key_prefix + "*", count=500)]
        if keys:
            await self.client.delete(*keys)
        await self.store.close()
        await self.client.aclose()


Harness = MemoryHarness | RedisHarness


async def redis_up() -> bool:
    client = aioredis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(await client.ping())
    except (OSError, aioredis.RedisError):
        return False
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "redis" and not await redis_up():
        pytest.skip(f"no Redis at {REDIS_URL}")
    made: Harness = MemoryHarness() if request.param == "memory" else RedisHarness()
    yield made
    await made.close()


def unary(body: bytes = b'{"id":"chatcmpl-1","choices":[{"message":{"content":"caf\xc3\xa9 \\u0000"}}]}') -> CacheEntry:
    return CacheEntry(deployment="dep-a", created_at=1_700_000_000.5, cost=1_234_000, usage=make_usage(12, 3, cached_tokens=4), body=body)


def streamed(count: int = 20) -> CacheEntry:
    chunks = tuple(b'{"choices":[{"delta":{"content":"part %d \xe2\x9c\x93"}}]}' % n for n in range(count))
    return CacheEntry(deployment="dep-b", created_at=1_700_000_001.0, cost=99, usage=make_usage(5, count), chunks=(*chunks, b""))


def key(n: int) -> str:
    return f"{n:064x}"


async def test_unary_entry_round_trips(harness: Harness) -> None:
    entry = unary()
    assert await harness.store.put(KEY, entry, 60)
    got = await harness.store.get(KEY)
    assert got == entry
    assert got is not None and not got.streamed and got.usage is not None and got.usage.cached_tokens == 4


async def test_streamed_entry_round_trips(harness: Harness) -> None:
    entry = streamed()
    assert await harness.store.put(KEY, entry, 60)
    got = await harness.store.get(KEY)
    assert got == entry
    assert got is not None and got.streamed and got.chunks is not None and len(got.chunks) == 21


async def test_large_compressible_entry_round_trips(harness: Harness) -> None:
    entry = unary(b'{"text":"' + b"la " * 15_000 + b'"}')
    assert await harness.store.put(KEY, entry, 60)
    assert await harness.store.get(KEY) == entry


async def test_absent_key_is_a_miss(harness: Harness) -> None:
    assert await harness.store.get(KEY) is None


async def test_put_replaces(harness: Harness) -> None:
    assert await harness.store.put(KEY, unary(), 60)
    assert await harness.store.put(KEY, streamed(3), 60)
    assert await harness.store.get(KEY) == streamed(3)


async def test_delete(harness: Harness) -> None:
    assert await harness.store.put(KEY, unary(), 60)
    await harness.store.delete(KEY)
    assert await harness.store.get(KEY) is None
    await harness.store.delete(KEY)  # absent: nothing happens


async def test_entry_expires_after_its_ttl(harness: Harness) -> None:
    assert await harness.store.put(KEY, unary(), 0.15)
    assert await harness.store.put(key(1), unary(), 60)
    assert await harness.store.get(KEY) == unary()
    await harness.advance(0.3)
    assert await harness.store.get(KEY) is None
    assert not await harness.holds(KEY)
    assert await harness.store.get(key(1)) == unary()


async def test_ttl_must_be_positive(harness: Harness) -> None:
    for ttl in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ttl_s"):
            await harness.store.put(KEY, unary(), ttl)


async def test_oversized_entry_is_refused(harness: Harness) -> None:
    assert await harness.store.put(KEY, unary(), 60)
    big = unary(b"x" * MAX_ENTRY_BYTES)
    assert not await harness.store.put(key(1), big, 60)
    assert await harness.store.get(key(1)) is None
    assert not await harness.holds(key(1))
    # A refused put leaves what else the store holds alone.
    assert await harness.store.get(KEY) == unary()


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"garbage",
        bytes((1,)),
        bytes((9, 0)) + encode_entry(CacheEntry(deployment="d", created_at=0, body=b"{}")),  # a format never written
        bytes((1, 7)) + encode_entry(CacheEntry(deployment="d", created_at=0, body=b"{}")),  # a codec never written
        frame(encode_entry(unary()), compress=False)[:-3],  # cut short
        frame(encode_entry(unary()), compress=True)[:-3],
        frame(b"\x93\x01\x02\x03", compress=False),  # msgpack, not an entry
        frame(b"\x82\xaadeployment\xa1d\xaacreated_at\x00", compress=False),  # neither body nor chunks
        bytes((1, ZLIB)) + b"\x78\x9c not zlib",
        frame(b"\x00" * (MAX_ENTRY_BYTES * 4), compress=True),  # inflates past the bound
    ],
)
async def test_corrupt_entry_is_dropped_not_served(harness: Harness, garbage: bytes) -> None:
    await harness.write_raw(KEY, garbage)
    assert await harness.store.get(KEY) is None
    assert not await harness.holds(KEY)
    # The key works again afterwards.
    assert await harness.store.put(KEY, unary(), 60)
    assert await harness.store.get(KEY) == unary()


async def test_entries_of_two_scopes_never_collide(harness: Harness) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "the same question"}], "temperature": 0}
    mine = cache_key("tenant:a", "m", "dep-a", "v1", "chat", body)
    theirs = cache_key("tenant:b", "m", "dep-a", "v1", "chat", body)
    shared = cache_key("shared:a", "m", "dep-a", "v1", "chat", body)
    assert mine is not None and theirs is not None and shared is not None
    assert len({mine, theirs, shared}) == 3
    assert await harness.store.put(mine, unary(b'{"for":"a"}'), 60)
    assert await harness.store.get(theirs) is None
    assert await harness.store.get(shared) is None
    assert await harness.store.put(theirs, unary(b'{"for":"b"}'), 60)
    assert (await harness.store.get(mine)) == unary(b'{"for":"a"}')
    assert (await harness.store.get(theirs)) == unary(b'{"for":"b"}')


# --- memory only ------------------------------------------------------------------------


def entry_of_size(n: int) -> CacheEntry:
    return unary(bytes([n % 256]) * 10_000)


async def test_memory_evicts_least_recently_used_by_bytes() -> None:
    size = len(KEY) + len(frame(encode_entry(entry_of_size(0)), compress=False)) + ENTRY_OVERHEAD
    store = MemoryCacheStore(max_bytes=3 * size + 10, max_entry_bytes=MAX_ENTRY_BYTES)
    for n in range(3):
        assert await store.put(key(n), entry_of_size(n), 60)
    assert store.held_bytes == 3 * size
    assert await store.get(key(0)) is not None  # key 1 is now the least recently used
    assert await store.put(key(3), entry_of_size(3), 60)
    assert store.held_bytes == 3 * size
    assert await store.get(key(1)) is None
    for n in (0, 2, 3):
        assert await store.get(key(n)) == entry_of_size(n)
    # Replacing an entry counts it once.
    assert await store.put(key(3), entry_of_size(3), 60)
    assert store.held_bytes == 3 * size


async def test_memory_refuses_an_entry_larger_than_the_whole_store() -> None:
    store = MemoryCacheStore(max_bytes=5_000, max_entry_bytes=MAX_ENTRY_BYTES)
    assert await store.put(key(0), unary(), 60)
    assert not await store.put(key(1), entry_of_size(1), 60)
    assert await store.get(key(0)) == unary()


async def test_memory_drops_what_expired_and_what_it_dropped_frees_room() -> None:
    now = [0.0]
    store = MemoryCacheStore(max_bytes=1024 * 1024, clock=lambda: now[0])
    assert await store.put(KEY, entry_of_size(0), 1)
    held = store.held_bytes
    now[0] = 1.0
    assert await store.get(KEY) is None
    assert store.held_bytes == 0 < held
    await store.close()


# --- Redis only -------------------------------------------------------------------------


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    if not await redis_up():
        pytest.skip(f"no Redis at {REDIS_URL}")
    client = aioredis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=1)
    yield client
    await client.aclose()


async def cleanup(client: aioredis.Redis, store: RedisCacheStore) -> None:
    keys = [k async for k in client.scan_iter(match=store.key_prefix + "*", count=500)]
    if keys:
        await client.delete(*keys)
    await store.close()


async def test_redis_compresses_above_the_threshold_and_sets_a_ttl(redis_client: aioredis.Redis) -> None:
    store = RedisCacheStore(REDIS_URL, prefix=f"sgtest-{uuid.uuid4().hex[:12]}:", compress_above_bytes=1024, timeout_s=1.0)
    try:
        small, large = unary(), unary(b'{"text":"' + b"la " * 5_000 + b'"}')
        # Compressed off the event loop, being this large.
        huge = streamed(20_000)
        assert await store.put(key(0), small, 30)
        assert await store.put(key(1), large, 30)
        assert await store.put(key(2), huge, 30)
        assert await store.get(key(2)) == huge
        stored_small = await redis_client.get(store.key_prefix + key(0))
        stored_large = await redis_client.get(store.key_prefix + key(1))
        assert isinstance(stored_small, bytes) and isinstance(stored_large, bytes)
        assert stored_small[:2] == bytes((1, 0))
        assert stored_large[:2] == bytes((1, ZLIB))
        assert len(stored_large) < len(encode_entry(large)) // 10
        assert 29_000 < await redis_client.pttl(store.key_prefix + key(1)) <= 30_000
        # What is stored names nothing of the key's material, and the key carries the entry format.
        assert store.key_prefix.endswith(":v1:")
    finally:
        await cleanup(redis_client, store)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def assert_fast_miss(store: RedisCacheStore) -> None:
    started = time.perf_counter()
    assert await store.get(KEY) is None
    assert not await store.put(KEY, unary(), 60)
    await store.delete(KEY)
    assert time.perf_counter() - started < 1.0


async def test_redis_refusing_connections_is_a_fast_miss(caplog: pytest.LogCaptureFixture) -> None:
    store = RedisCacheStore(f"redis://127.0.0.1:{closed_port()}/0", prefix="sgtest-down:", timeout_s=0.2)
    with caplog.at_level(logging.INFO, logger="sluicegate.cache"):
        for _ in range(5):
            await assert_fast_miss(store)
    await store.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "logged once per outage"
    assert "ConnectionError" in warnings[0].getMessage()
    assert KEY not in caplog.text


async def test_redis_that_goes_silent_then_comes_back(redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    hole = BlackHole(REDIS_HOST, int(REDIS_PORT))
    hole.start()
    store = RedisCacheStore(f"redis://{hole.dsn_host}/0", prefix=f"sgtest-{uuid.uuid4().hex[:12]}:", timeout_s=0.2, retry_after_s=0.1)
    try:
        with caplog.at_level(logging.INFO, logger="sluicegate.cache"):
            assert await store.put(KEY, unary(), 60)
            assert await store.get(KEY) == unary()
            hole.swallow()
            for _ in range(3):
                await assert_fast_miss(store)
            hole.forward()
            # The first call may meet a connection the hole reset, and rest again: a few tries past retry_after_s.
            got = None
            for _ in range(10):
                await asyncio.sleep(0.15)
                got = await store.get(KEY)
                if got is not None:
                    break
            assert got == unary()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "TimeoutError" in warnings[0].getMessage()
        assert any("answers again" in r.getMessage() for r in caplog.records)
        assert KEY not in caplog.text
    finally:
        await cleanup(redis_client, store)
        hole.close()


async def test_redis_that_goes_away_is_a_fast_miss(redis_client: aioredis.Redis) -> None:
    hole = BlackHole(REDIS_HOST, int(REDIS_PORT))
    hole.start()
    store = RedisCacheStore(f"redis://{hole.dsn_host}/0", prefix=f"sgtest-{uuid.uuid4().hex[:12]}:", timeout_s=0.2)
    try:
        assert await store.put(KEY, unary(), 60)
        hole.close()
        for _ in range(3):
            await assert_fast_miss(store)
    finally:
        await cleanup(redis_client, store)


async def test_redis_given_client_is_left_open(redis_client: aioredis.Redis) -> None:
    store = RedisCacheStore(client=redis_client, prefix=f"sgtest-{uuid.uuid4().hex[:12]}:")
    assert await store.put(KEY, unary(), 60)
    await cleanup(redis_client, store)
    assert await redis_client.ping()
