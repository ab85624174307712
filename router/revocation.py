"""Per-replica cache of authenticated keys, and revocation over Redis pub/sub.

A replica caches a key it has validated for ``ttl_s`` and then validates it
again (the fallback should a revocation message be missed). When the store
cannot be reached a cached key keeps working until ``stale_ttl_s`` after its
last successful validation; unknown keys are refused.

Revoking a key or changing a tenant writes the store, evicts the local cache and
publishes ``key:<hash>`` or ``tenant:<id>`` on ``sg:auth:revoked``; every
replica's listener evicts at once. A key is named by its keyed hash, which is
unique across tenants, never by its id, which is unique within its tenant only. After losing its Redis connection a listener
may have missed messages, so on reconnecting it empties the whole cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from core.principal import Principal
from router.tenant_records import StoreUnavailable

log = logging.getLogger("sluicegate.revocation")

CHANNEL = "sg:auth:revoked"
_PUBLISH_TIMEOUT_S = 2.0
_RECONNECT_MAX_S = 5.0
# A key's keyed hash --> (principal, wall-clock expiry) for a usable key, None for an unusable one.
Loader = Callable[[str], Awaitable[tuple[Principal, float | None] | None]]


@dataclass(slots=True)
class CachedKey:
    principal: Principal
    fresh_until: float  # monotonic: validate again after this
    stale_until: float  # monotonic: usable while the store is unreachable until this
    expires_at: float | None  # wall clock: the key's own expiry


class KeyCache:
    """Validated keys by keyed hash, each for a bounded time; unknown hashes briefly remembered."""

    def __init__(
        self,
        ttl_s: float = 60.0,
        stale_ttl_s: float = 300.0,
        negative_ttl_s: float = 5.0,
        max_entries: int = 100_000,
    ) -> None:
        self.ttl_s = ttl_s
        self.stale_ttl_s = max(stale_ttl_s, ttl_s)
        self.negative_ttl_s = negative_ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, CachedKey] = {}
        # Bumped by every eviction: a load that began before one must not be cached.
        self.generation = 0
        # Hashes the store said are unusable: repeated bad keys must not each cost a query.
        self._refused: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def fresh(self, key_hash: str) -> Principal | None:
        """The hot path: one dict lookup and two clock reads."""
        entry = self._entries.get(key_hash)
        if entry is None or entry.fresh_until <= time.monotonic():
            return None
        if entry.expires_at is not None and entry.expires_at <= time.time():
            return None
        return entry.principal

    def stale(self, entry: CachedKey) -> Principal | None:
        if entry.stale_until <= time.monotonic():
            return None
        if entry.expires_at is not None and entry.expires_at <= time.time():
            return None
        return entry.principal

    async def authenticate(self, key_hash: str, load: Loader) -> Principal | None:
        """Cache first; on a miss ``load`` asks the store, whose failure the cache may cover.

        ``load`` gives (principal, wall-clock expiry) for a usable key, None for an
        unusable one, or raises ``StoreUnavailable``: then a cached key still
        within its stale TTL is used and anything else is refused.
        """
        principal = self.fresh(key_hash)
        if principal is not None:
            return principal
        if self.refused(key_hash):
            return None
        generation = self.generation
        try:
            loaded = await load(key_hash)
        except StoreUnavailable:
            entry = self._entries.get(key_hash)
            stale = self.stale(entry) if entry is not None else None
            if stale is None:
                raise
            return stale
        if loaded is None:
            self.refuse(key_hash, generation)
            return None
        self.put(key_hash, loaded[0], loaded[1], generation)
        return loaded[0]

    def put(self, key_hash: str, principal: Principal, expires_at: float | None, generation: int) -> None:
        if generation != self.generation:
            return
        self._refused.pop(key_hash, None)
        if key_hash not in self._entries and len(self._entries) >= self.max_entries:
            self._make_room()
        now = time.monotonic()
        self._entries[key_hash] = CachedKey(principal, now + self.ttl_s, now + self.stale_ttl_s, expires_at)

    def refused(self, key_hash: str) -> bool:
        until = self._refused.get(key_hash)
        return until is not None and until > time.monotonic()

    def refuse(self, key_hash: str, generation: int) -> None:
        if generation != self.generation:
            return
        self._entries.pop(key_hash, None)
        if len(self._refused) >= self.max_entries:
            self._refused.clear()
        self._refused[key_hash] = time.monotonic() + self.negative_ttl_s

    def evict_key(self, key_hash: str) -> None:
        self.generation += 1
        self._entries.pop(key_hash, None)

    def evict_tenant(self, tenant_id: str) -> None:
        self.generation += 1
        for key_hash in [h for h, e in self._entries.items() if e.principal.tenant == tenant_id]:
            del self._entries[key_hash]
        # A re-enabled tenant's keys may sit among the refused ones.
        self._refused.clear()

    def evict_all(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._refused.clear()

    def _make_room(self) -> None:
        now = time.monotonic()
        for key_hash in [h for h, e in self._entries.items() if e.stale_until <= now]:
            del self._entries[key_hash]
        if len(self._entries) >= self.max_entries:
            # Dicts keep insertion order: the first entry is the oldest.
            del self._entries[next(iter(self._entries))]


class RevocationBus:
    """Publishes revocations and, once ``listen`` is called, applies everyone's to a cache."""

    def __init__(self, url: str, channel: str = CHANNEL) -> None:
        self.url = url
        self.channel = channel
        self._publisher: redis.Redis | None = None
        self._listener: asyncio.Task[None] | None = None

    async def key_revoked(self, key_hash: str) -> None:
        await self._publish(f"key:{key_hash}")

    async def tenant_changed(self, tenant_id: str) -> None:
        await self._publish(f"tenant:{tenant_id}")

    async def _publish(self, message: str) -> None:
        # The store is already written: a lost message only delays eviction to the cache TTL.
        if self._publisher is None:
            self._publisher = redis.Redis.from_url(
                self.url, socket_connect_timeout=_PUBLISH_TIMEOUT_S, socket_timeout=_PUBLISH_TIMEOUT_S
            )
        try:
            async with asyncio.timeout(_PUBLISH_TIMEOUT_S):
                await self._publisher.publish(self.channel, message)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("revocation not published (%s); other replicas drop it within their cache TTL", type(exc).__name__)

    def listen(self, cache: KeyCache) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(cache))

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        if self._publisher is not None:
            await self._publisher.aclose()
            self._publisher = None

    async def _listen(self, cache: KeyCache) -> None:
        delay = 0.1
        while True:
            client = redis.Redis.from_url(self.url, socket_connect_timeout=2.0, health_check_interval=10)
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    # Whatever was published before this subscription is lost to us.
                    cache.evict_all()
                    delay = 0.1
                    await _consume(pubsub, lambda m: apply_message(cache, m))
            except (RedisError, OSError) as exc:
                log.warning("revocation listener lost Redis (%s); retrying", type(exc).__name__)
                cache.evict_all()
            finally:
                await client.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_S)


async def _consume(pubsub: PubSub, handle: Callable[[str], None]) -> None:
    while True:
        message = await pubsub.get_message(timeout=1.0)
        if message is None or message.get("type") != "message":
            continue
        data = message["data"]
        handle(data.decode() if isinstance(data, bytes) else str(data))


def apply_message(cache: KeyCache, message: str) -> None:
    kind, _, value = message.partition(":")
    if kind == "key" and value:
        cache.evict_key(value)
    elif kind == "tenant" and value:
        cache.evict_tenant(value)
    else:
        # Unknown message: dropping everything is safe, keeping something might not be.
        cache.evict_all()
