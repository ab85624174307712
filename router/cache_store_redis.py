"""The response cache store shared by every replica through Redis: one GET or SET per call.

A value is ``router.cache_store.frame``'s: a format byte, a codec byte and the
entry as msgpack, zlib-compressed when larger than ``compress_above_bytes``.
Each key is ``<prefix>v<ENTRY_FORMAT>:<key>`` and set with ``PX``, so Redis
expires it; an entry larger than ``max_entry_bytes`` is refused, and Redis's
own ``maxmemory`` with an ``allkeys-lru`` (or ``volatile-lru``) policy bounds
the whole. Keys are spread over cluster slots: no call touches two keys.

A cache must never slow a request down: each call ends within ``timeout_s``
(socket, connect and pool waits included), and after a connection failure
calls skip Redis for ``retry_after_s``, answering a miss at once. Failures are
logged once per outage, by class name only; a key or a value never reaches a
log line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from router.cache_store import ENTRY_FORMAT, CacheEntry, CorruptEntry, check_ttl, decode_entry, encode_entry, frame

log = logging.getLogger("sluicegate.cache")

T = TypeVar("T")

# Failures that say the store cannot be reached: calls rest for a while. Any other
# RedisError (a full or read-only server) is a miss for that call alone.
_UNREACHABLE: tuple[type[BaseException], ...] = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError, TimeoutError)
_FAILED: tuple[type[BaseException], ...] = (*_UNREACHABLE, redis_errors.RedisError)
# Entries this large are compressed off the event loop (zlib lets go of the GIL).
_OFF_LOOP_BYTES = 256 * 1024


class _Failed(Exception):
    """A call that did not complete; already logged."""


class RedisCacheStore:
    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "sg:cache:",
        client: aioredis.Redis | None = None,
        *,
        max_entry_bytes: int = 4 * 1024 * 1024,
        compress_above_bytes: int = 1024,
        timeout_s: float = 0.1,
        retry_after_s: float = 1.0,
        max_connections: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``client`` (if given) is used as is and left open by ``close``; else a bounded pool is built from ``url``."""
        if max_entry_bytes <= 0 or timeout_s <= 0 or retry_after_s < 0:
            raise ValueError("max_entry_bytes and timeout_s must be positive, retry_after_s not negative")
        self._owns_client = client is None
        if client is None:
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=timeout_s,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
            client = aioredis.Redis.from_pool(pool)
        self._redis = client
        self._prefix = f"{prefix}v{ENTRY_FORMAT}:"
        self._max_entry_bytes = max_entry_bytes
        self._compress_above = compress_above_bytes
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._clock = clock
        # Until when calls skip Redis (monotonic seconds), and whether a failure was logged since the last success.
        self._resting_until = -math.inf
        self._failing = False

    @property
    def key_prefix(self) -> str:
        """Every key this store writes starts with this string."""
        return self._prefix

    async def get(self, key: str) -> CacheEntry | None:
        if self._resting():
            return None
        try:
            value = await self._call(self._redis.get(self._prefix + key))
        except _Failed:
            return None
        if not isinstance(value, bytes):
            return None  # absent (or a client that decodes answers to text, which this store cannot use)
        try:
            return decode_entry(value, self._max_entry_bytes)
        except CorruptEntry:
            log.warning("dropped a response cache entry that could not be decoded")
            await self.delete(key)
            return None

    async def put(self, key: str, entry: CacheEntry, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        packed = encode_entry(entry)
        if len(packed) > self._max_entry_bytes or self._resting():
            return False
        compress = len(packed) > self._compress_above
        if compress and len(packed) >= _OFF_LOOP_BYTES:
            value = await asyncio.to_thread(frame, packed, True)
        else:
            value = frame(packed, compress)
        try:
            await self._call(self._redis.set(self._prefix + key, value, px=max(1, math.ceil(ttl_s * 1000))))
        except _Failed:
            return False
        return True

    async def delete(self, key: str) -> None:
        if self._resting():
            return
        try:
            await self._call(self._redis.delete(self._prefix + key))
        except _Failed:
            return

    async def close(self) -> None:
        if self._owns_client:
            await self._redis.aclose()

    def _resting(self) -> bool:
        return self._clock() < self._resting_until

    async def _call(self, command: Awaitable[T]) -> T:
        """``command``'s answer within the deadline, or ``_Failed`` (logged once per outage)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                answer = await command
        except _FAILED as exc:
            if isinstance(exc, _UNREACHABLE):
                self._resting_until = self._clock() + self._retry_after_s
            if not self._failing:
                self._failing = True
                log.warning("response cache store failed (%s); serving without it until it answers", type(exc).__name__)
            raise _Failed from None
        if self._failing:
            self._failing = False
            log.info("response cache store answers again")
        return answer
