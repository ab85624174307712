"""The task queue on Redis Streams: one stream per queue name, one consumer group of workers.

Keys, under a prefix (``sluicegate:tasks`` unless told), with the queue name
in braces (a Redis Cluster hash tag: the scripts touch two keys of a queue):
``{p}:{queue}`` the stream, ``{p}:{queue}:delayed`` a sorted set of retries by
due time, ``{p}:{queue}:dead`` the dead-letter stream. An entry names a task
and its tenant, nothing more; the task itself is in the store.

- Enqueue is an XADD, made only after the task's row is committed.
- Workers XREADGROUP (blocking); an entry stays pending until the worker has
  committed the task's outcome, then it is acknowledged and deleted (one
  script: XACK + XDEL, so the stream holds only what is still to do).
- A worker that dies leaves its entries pending: XAUTOCLAIM hands entries idle
  longer than the visibility timeout to a live worker. A running worker keeps
  its entries fresh (``touch``: XCLAIM to itself, JUSTID) so a long task is not
  taken from it.
- A retry is a delayed re-XADD: the entry is acknowledged and its task put in
  the delayed set with its due time in one script; the worker loop moves due
  members back to the stream (``promote``). Due times are the worker's clock.
  A task has one member (its id and tenant); a second schedule keeps the
  earlier time (``ZADD LT``): one entry per unfinished task is all it needs,
  and a worker that looks too early puts it back until it is due.
- Every command ends within ``timeout_s`` (a blocking read: its block time
  more); a silent Redis fails the call with ``TimeoutError``.
- After the last attempt the entry moves to the dead-letter stream (XADD there,
  XACK + XDEL here, one script); ``replay`` moves it back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar, cast

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

T = TypeVar("T")
DEFAULT_PREFIX = "sluicegate:tasks"
DEFAULT_GROUP = "workers"

_ACK = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
"""
_RETRY = """
redis.call('ZADD', KEYS[2], 'LT', ARGV[3], ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
"""
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
    local tab = string.find(member, '\\t', 1, true)
    redis.call('XADD', KEYS[1], '*', 'task', string.sub(member, 1, tab - 1), 'tenant', string.sub(member, tab + 1))
    redis.call('ZREM', KEYS[2], member)
end
return #due
"""
_DEAD = """
redis.call('XADD', KEYS[2], '*', 'task', ARGV[3], 'tenant', ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
"""
_REPLAY = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
    redis.call('XADD', KEYS[2], '*', 'task', ARGV[2], 'tenant', ARGV[3])
    return 1
end
return 0
"""


class Entry(msgspec.Struct, frozen=True):
    """One delivery: the stream entry, the task it names, how often Redis has delivered it."""

    entry_id: str
    task_id: str
    tenant: str
    deliveries: int = 1


# An entry as redis-py returns it (its stubs allow wider types than the server sends).
_Raw = tuple[bytes | str, dict[bytes | str, bytes | str] | None]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry(entry_id: bytes | str, fields: dict[bytes | str, bytes | str] | None, deliveries: int = 1) -> Entry | None:
    if not fields:
        return None  # deleted while pending
    decoded = {_text(k): _text(v) for k, v in fields.items()}
    task, tenant = decoded.get("task"), decoded.get("tenant")
    if task is None or tenant is None:
        return None
    return Entry(_text(entry_id), task, tenant, deliveries)


class TaskQueue:
    def __init__(
        self, redis: aioredis.Redis, queue: str, *, prefix: str = DEFAULT_PREFIX, group: str = DEFAULT_GROUP, timeout_s: float = 5.0
    ) -> None:
        self.redis = redis
        self.timeout_s = timeout_s
        self.name = queue
        self.group = group
        # One hash tag per queue: the scripts touch two of its keys, which a Redis Cluster wants in one slot.
        self.stream = f"{prefix}:{{{queue}}}"
        self.delayed = f"{self.stream}:delayed"
        self.dead = f"{self.stream}:dead"
        self._ack = redis.register_script(_ACK)
        self._retry = redis.register_script(_RETRY)
        self._promote = redis.register_script(_PROMOTE)
        self._dead = redis.register_script(_DEAD)
        self._replay = redis.register_script(_REPLAY)

    async def _within(self, call: Awaitable[T], extra_s: float = 0.0) -> T:
        """Every command has a deadline: a Redis that stops answering fails the call, it does not hang it."""
        async with asyncio.timeout(self.timeout_s + extra_s):
            return await call

    async def ensure_group(self) -> None:
        try:
            await self._within(self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True))
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, task_id: str, tenant: str) -> str:
        return _text(await self._within(self.redis.xadd(self.stream, {"task": task_id, "tenant": tenant})))

    async def read(self, consumer: str, *, count: int, block_ms: int) -> list[Entry]:
        reply = cast(
            "list[tuple[bytes, list[_Raw]]] | None",
            await self._within(
                self.redis.xreadgroup(self.group, consumer, {self.stream: ">"}, count=count, block=block_ms), block_ms / 1000
            ),
        )
        out: list[Entry] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                entry = _entry(entry_id, fields)
                if entry is not None:
                    out.append(entry)
                else:
                    await self.ack(_text(entry_id))
        return out

    async def reclaim(self, consumer: str, *, min_idle_ms: int, count: int = 100) -> list[Entry]:
        """Entries idle past the visibility timeout (their worker died), now this consumer's, with delivery counts."""
        reply = await self._within(self.redis.xautoclaim(self.stream, self.group, consumer, min_idle_ms, start_id="0-0", count=count))
        claimed = cast("list[_Raw]", reply[1])
        if not claimed:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, _fields in claimed:
                pipe.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
            replies = await self._within(pipe.execute())
        counts = {_text(p["message_id"]): int(p["times_delivered"]) for reply in replies for p in reply}
        out: list[Entry] = []
        for entry_id, fields in claimed:
            entry = _entry(entry_id, fields, counts.get(_text(entry_id), 1))
            if entry is not None:
                out.append(entry)
        return out

    async def touch(self, consumer: str, entry_id: str) -> None:
        """Reset an entry's idle time (the worker on it is alive) without counting a delivery."""
        await self._within(self.redis.xclaim(self.stream, self.group, consumer, 0, [entry_id], justid=True))

    async def ack(self, entry_id: str) -> None:
        await self._within(self._ack(keys=[self.stream], args=[self.group, entry_id]))

    async def retry(self, entry: Entry, *, due: float) -> None:
        await self._within(
            self._retry(keys=[self.stream, self.delayed], args=[self.group, entry.entry_id, repr(due), f"{entry.task_id}\t{entry.tenant}"])
        )

    async def promote(self, *, now: float, limit: int = 100) -> int:
        """Moves retries due by ``now`` back to the stream; returns how many."""
        return int(cast(int, await self._within(self._promote(keys=[self.stream, self.delayed], args=[repr(now), limit]))))

    async def due_times(self) -> dict[str, float]:
        """Delayed retries by task id (for operators and tests)."""
        members = cast("list[tuple[bytes, float]]", await self._within(self.redis.zrange(self.delayed, 0, -1, withscores=True)))
        return {_text(m).split("\t", 1)[0]: float(score) for m, score in members}

    async def dead_letter(self, entry: Entry) -> None:
        await self._within(self._dead(keys=[self.stream, self.dead], args=[self.group, entry.entry_id, entry.task_id, entry.tenant]))

    async def dead_entries(self, *, count: int = 1000) -> list[Entry]:
        rows = cast("list[_Raw]", await self._within(self.redis.xrange(self.dead, count=count)))
        return [e for e in (_entry(entry_id, fields) for entry_id, fields in rows) if e is not None]

    async def move_back(self, entry: Entry) -> bool:
        """A dead entry back on the stream; False when another replay already moved it."""
        return bool(await self._within(self._replay(keys=[self.dead, self.stream], args=[entry.entry_id, entry.task_id, entry.tenant])))

    async def drop_dead(self, entry: Entry) -> None:
        await self._within(self.redis.xdel(self.dead, entry.entry_id))

    async def pending_count(self) -> int:
        """Entries delivered and not yet acknowledged (0 before any worker made the group)."""
        try:
            info = await self._within(self.redis.xpending(self.stream, self.group))
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return 0
            raise
        return int(info["pending"])
