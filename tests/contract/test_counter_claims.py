"""``claim_once`` behaves alike in both counter stores: one winner per key until the claim expires.

Budget alerts rest on it: a threshold is claimed once per period by every
replica sharing the store, and only the winner sends the alert.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis.asyncio as aioredis

from budgets.store_redis import RedisCounterStore
from tests.contract.counter_harness import REDIS_URL, Harness


async def test_the_first_claim_wins_and_every_later_one_loses(harness: Harness) -> None:
    store = harness.store
    until = await harness.now() + 60_000
    assert await store.claim_once("alert:budget:t:a:tokens:month:2026-11:80", until)
    assert not await store.claim_once("alert:budget:t:a:tokens:month:2026-11:80", until)
    # Another threshold, another period: claims of their own.
    assert await store.claim_once("alert:budget:t:a:tokens:month:2026-11:90", until)
    assert await store.claim_once("alert:budget:t:a:tokens:month:2026-12:80", until + 1)


async def test_concurrent_claims_have_exactly_one_winner(harness: Harness) -> None:
    until = await harness.now() + 60_000
    results = await asyncio.gather(*(harness.store.claim_once("alert:race", until) for _ in range(50)))
    assert results.count(True) == 1


async def test_a_claim_can_be_won_again_once_it_expired(harness: Harness) -> None:
    store = harness.store
    now = await harness.now()
    assert await store.claim_once("alert:short", now + 300)
    assert not await store.claim_once("alert:short", now + 300)
    await harness.advance(400)
    assert await store.claim_once("alert:short", await harness.now() + 60_000)


async def test_a_claim_past_its_expiry_is_never_granted(harness: Harness) -> None:
    now = await harness.now()
    assert not await harness.store.claim_once("alert:late", now - 1)
    assert await harness.store.claim_once("alert:late", now + 60_000)


async def test_a_claim_without_expiry_is_held_for_ever(harness: Harness) -> None:
    store = harness.store
    assert await store.claim_once("alert:lifetime", None)
    await harness.advance(300)
    assert not await store.claim_once("alert:lifetime", None)


async def test_many_expired_claims_are_forgotten_and_live_ones_kept(harness: Harness) -> None:
    store = harness.store
    now = await harness.now()
    for i in range(20):
        assert await store.claim_once(f"alert:many:{i}", now + 200)
    assert await store.claim_once("alert:kept", now + 60_000)
    await harness.advance(300)
    later = await harness.now()
    assert all([await store.claim_once(f"alert:many:{i}", later + 60_000) for i in range(20)])
    assert not await store.claim_once("alert:kept", later + 60_000)


async def test_replicas_sharing_redis_claim_once_between_them() -> None:
    prefix = f"sgtest-{uuid.uuid4().hex[:12]}:"
    replicas = [RedisCounterStore(REDIS_URL, prefix=prefix) for _ in range(3)]
    client = aioredis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=1)
    try:
        if not await replicas[0].ping():
            pytest.skip(f"no Redis at {REDIS_URL}")
        until = time.time_ns() // 1_000_000 + 60_000
        results = await asyncio.gather(*(store.claim_once("alert:shared", until) for store in replicas for _ in range(10)))
        assert results.count(True) == 1
        ttl = await client.pttl(replicas[0].key_prefix + "cl:alert:shared")
        assert 0 < ttl <= 60_000
    finally:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=100)]
        keys += [key async for key in client.scan_iter(match="{" + prefix + "}*", count=100)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        for store in replicas:
            await store.close()
