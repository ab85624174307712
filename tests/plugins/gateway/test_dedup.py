"""Delivery ids in Redis: the first claim wins, a repeat within the TTL does not, a forgotten one can be claimed again."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from sluicegate_gateway.dedup import DeliveriesUnavailable, DeliveryLog

from tests.plugins.gateway.conftest import REDIS_URL


async def test_first_claim_wins_until_the_ttl_passes(redis_prefix: str) -> None:
    client = aioredis.from_url(REDIS_URL)
    try:
        log = DeliveryLog(client, redis_prefix, ttl_s=0.3)
        assert await log.first("github", "d-1") is True
        assert await log.first("github", "d-1") is False
        assert await log.first("gitlab", "d-1") is True  # per provider
        # Many replicas racing on one delivery: exactly one wins.
        racers = await asyncio.gather(*(DeliveryLog(client, redis_prefix, 60).first("ado", "race") for _ in range(20)))
        assert racers.count(True) == 1
        key = log.key("github", "d-1")
        assert key.startswith(f"{redis_prefix}:deliveries:github:") and "d-1" not in key
        assert 0 < await client.pttl(key) <= 300
        await asyncio.sleep(0.4)
        assert await log.first("github", "d-1") is True
        await log.forget("github", "d-1")
        assert await log.first("github", "d-1") is True
    finally:
        await client.aclose()


async def test_redis_down_is_a_503_not_a_duplicate() -> None:
    client = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        log = DeliveryLog(client, "sgtest-gateway:down", 60)
        try:
            await log.first("github", "d-1")
        except DeliveriesUnavailable as exc:
            assert exc.status == 503 and exc.retry_after is not None
        else:
            raise AssertionError("a claim with Redis down must not succeed")
        await log.forget("github", "d-1")  # best effort: no raise
    finally:
        await client.aclose()
