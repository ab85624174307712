"""Delivery ids seen, in Redis with a TTL: a redelivery within it is acknowledged and not queued again.

One ``SET key 1 NX PX ttl`` per delivery: the first claim wins, on every
replica at once. A delivery whose task could not be queued is forgotten
(``forget``) so the provider's retry is not mistaken for a duplicate. The
orchestrator's idempotency key (provider and delivery id) backs this up once
the TTL has passed. Redis is required: the orchestrator's queue lives there.
"""

from __future__ import annotations

import hashlib

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.errors import GatewayError


class DeliveriesUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "webhook_store_unavailable"
    retryable = True


class DeliveryLog:
    def __init__(self, redis: aioredis.Redis, prefix: str, ttl_s: float) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:deliveries"
        self._ttl_ms = max(1, int(ttl_s * 1000))

    def key(self, provider: str, delivery_id: str) -> str:
        # Hashed: a delivery id is the sender's text; the key stays short and plain whatever it holds.
        digest = hashlib.sha256(delivery_id.encode("utf-8")).hexdigest()[:32]
        return f"{self._prefix}:{provider}:{digest}"

    async def first(self, provider: str, delivery_id: str) -> bool:
        """True the first time a delivery id is claimed within the TTL; False for a redelivery."""
        try:
            claimed = await self._redis.set(self.key(provider, delivery_id), b"1", nx=True, px=self._ttl_ms)
        except (RedisError, OSError):
            raise DeliveriesUnavailable("Webhook deliveries cannot be recorded now; try again shortly.", retry_after=5) from None
        return bool(claimed)

    async def forget(self, provider: str, delivery_id: str) -> None:
        """Best effort: if Redis is down too, the key lapses with its TTL and the store's idempotency key still holds."""
        try:
            await self._redis.delete(self.key(provider, delivery_id))
        except (RedisError, OSError):
            return
