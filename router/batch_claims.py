"""Which process runs a batch: one claim per batch, renewed while it runs.

With batches in PostgreSQL (``state.batches: postgres``) a claim is a lease
on the batch's own row (``claimed_by`` / ``claim_expires``, by the database's
clock): taken when free, lapsed or already this process's, renewed by its
owner, so replicas share the work without Redis, and the lease can never name
a batch the store does not have. Otherwise, with Redis (``state.redis_url``),
a lease as the canary decider's (``SET NX PX``, renewed by its owner), one key
per batch. Either way a replica that dies gives its batches up after
``batches.lease_s``. Without either, an exclusive ``flock`` on a file per
batch beside the batch store: one worker process of the host at a time,
released by the kernel when the process ends, however it ends.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from typing import IO, Protocol

import redis.asyncio as redis
from redis.exceptions import RedisError

from core.errors import GatewayError
from core.pg_calls import PgCalls

KEY_PREFIX = "sg:batch:claim:"
# Taken when free, lapsed, or this process's already (then renewed).
_PG_CLAIM = (
    "UPDATE batches SET claimed_by = $2, claim_expires = now() + make_interval(secs => $3)"
    " WHERE id = $1 AND (claimed_by IS NULL OR claimed_by = $2 OR claim_expires < now())"
)
_PG_RELEASE = "UPDATE batches SET claimed_by = NULL, claim_expires = NULL WHERE id = $1 AND claimed_by = $2"
# Deletes the claim only if this process still owns it.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class BatchClaims(Protocol):
    async def claim(self, batch_id: str) -> bool:
        """Take the batch, or keep it if this process has it: True while this process may run it."""
        ...

    async def release(self, batch_id: str, finished: bool) -> None:
        """Give the batch up (``finished``: it will never be claimed again)."""
        ...

    async def close(self) -> None: ...


class LocalClaims:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._held: dict[str, IO[bytes]] = {}

    async def claim(self, batch_id: str) -> bool:
        if batch_id in self._held:
            return True
        handle = await asyncio.to_thread(self._try_lock, self.folder / f"{batch_id}.claim")
        if handle is None:
            return False
        self._held[batch_id] = handle
        return True

    @staticmethod
    def _try_lock(path: Path) -> IO[bytes] | None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "ab")  # noqa: SIM115 - held open while the batch runs: the lock lives as long as it
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        return handle

    async def release(self, batch_id: str, finished: bool) -> None:
        handle = self._held.pop(batch_id, None)
        if handle is None:
            return
        if finished:
            # Removed while locked; whoever opens it afterwards finds the batch finished and leaves it.
            (self.folder / f"{batch_id}.claim").unlink(missing_ok=True)
        handle.close()

    async def close(self) -> None:
        for batch_id in list(self._held):
            await self.release(batch_id, False)


class RedisClaims:
    def __init__(self, redis_url: str, ttl_s: float) -> None:
        self._client = redis.Redis.from_url(redis_url, socket_timeout=2.0)
        self._id = f"{os.getpid()}-{os.urandom(6).hex()}"
        self._ttl_ms = int(ttl_s * 1000)

    async def claim(self, batch_id: str) -> bool:
        key = KEY_PREFIX + batch_id
        try:
            if await self._client.set(key, self._id, nx=True, px=self._ttl_ms):
                return True
            owner = await self._client.get(key)
            if owner is not None and (owner.decode() if isinstance(owner, bytes) else owner) == self._id:
                await self._client.pexpire(key, self._ttl_ms)
                return True
        except RedisError:
            return False
        return False

    async def release(self, batch_id: str, finished: bool) -> None:
        try:
            await self._client.eval(_RELEASE, 1, KEY_PREFIX + batch_id, self._id)
        except RedisError:
            return  # it lapses by itself

    async def close(self) -> None:
        await self._client.aclose()


class PostgresClaims:
    def __init__(self, calls: PgCalls, ttl_s: float) -> None:
        self._calls = calls
        self._id = f"{os.getpid()}-{os.urandom(6).hex()}"
        self._ttl_s = ttl_s

    async def claim(self, batch_id: str) -> bool:
        try:
            status = await self._calls.run(None, lambda conn: conn.execute(_PG_CLAIM, batch_id, self._id, self._ttl_s))
        except GatewayError:
            return False  # unknown for now: whoever holds it keeps it, a lapsed one waits for the next look
        return str(status) == "UPDATE 1"

    async def release(self, batch_id: str, finished: bool) -> None:
        try:
            await self._calls.run(None, lambda conn: conn.execute(_PG_RELEASE, batch_id, self._id))
        except GatewayError:
            return  # it lapses by itself

    async def close(self) -> None:
        return None  # the store owns the connections
