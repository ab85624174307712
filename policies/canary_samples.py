"""Canary samples: each request's outcome, counted where every replica adds to the same numbers.

A sample is counted into fields of one flat tally per key (the caller names the
key: one canary run and step). Latencies go into a fixed, log-spaced histogram,
so tallies from many replicas merge by adding counts and the p95 comes from the
merged counts. Field names, shared by both stores::

    <arm>:n  requests        <arm>:e  errors        <arm>:m  cost (pico-USD)
    <arm>:l<i>  latency bucket i of successful requests
    <arm>:t<i>  time-to-first-token bucket i of successful streamed requests

where ``<arm>`` is ``s`` (stable) or ``c`` (candidate). ``record`` only touches
memory; the Redis store sends its buffer with one pipeline per flush.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
from collections.abc import Mapping
from typing import Literal, Protocol

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger("sluicegate.canary")

# Bucket i holds values in (BOUNDS[i-1], BOUNDS[i]] ms; bucket 0 everything up to
# 1 ms, the last one everything from ~10 minutes up. The table is part of the
# stored format: change it and the field names must change with it.
_RATIO = 1.2
_TOP_MS = 600_000.0
BOUNDS: tuple[float, ...] = tuple(round(_RATIO**i, 3) for i in range(math.ceil(math.log(_TOP_MS) / math.log(_RATIO)) + 1))
BUCKETS = len(BOUNDS)
_EMPTY = (0,) * BUCKETS

Arm = Literal["stable", "candidate"]
_ARMS: dict[str, Arm] = {"s": "stable", "c": "candidate"}


class SamplesUnavailable(Exception):
    """The shared sample store cannot be read now; the caller decides nothing this time."""


class Sample(msgspec.Struct, frozen=True):
    arm: Arm
    # False for upstream failures (5xx, timeouts, broken streams), never for a client's 4xx.
    ok: bool
    latency_ms: float
    ttft_ms: float | None
    cost_pico: int


class ArmStats(msgspec.Struct, frozen=True):
    requests: int = 0
    errors: int = 0
    # Counts per histogram bucket (see BOUNDS), successful requests only.
    latency: tuple[int, ...] = _EMPTY
    ttft: tuple[int, ...] = _EMPTY
    cost_pico: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def ttft_samples(self) -> int:
        return sum(self.ttft)

    @property
    def p95_latency_ms(self) -> float | None:
        return p95(self.latency)

    @property
    def p95_ttft_ms(self) -> float | None:
        return p95(self.ttft)

    @property
    def cost_per_request(self) -> float:
        """Mean pico-USD per request, failures included."""
        return self.cost_pico / self.requests if self.requests else 0.0


class WindowStats(msgspec.Struct, frozen=True):
    stable: ArmStats = msgspec.field(default_factory=ArmStats)
    candidate: ArmStats = msgspec.field(default_factory=ArmStats)


def bucket(value_ms: float) -> int:
    """The histogram bucket of a value: the first whose upper bound is not below it."""
    return min(bisect.bisect_left(BOUNDS, value_ms), BUCKETS - 1)


def p95(counts: tuple[int, ...]) -> float | None:
    """The upper bound of the bucket holding the 95th percentile; None without samples."""
    total = sum(counts)
    if total == 0:
        return None
    rank = math.ceil(0.95 * total)
    seen = 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return BOUNDS[index]
    raise AssertionError("unreachable: the counts add up to total")


Tally = dict[str, int]


def add_sample(fields: Tally, sample: Sample) -> None:
    """Count one sample into a tally's fields."""
    arm = "c:" if sample.arm == "candidate" else "s:"
    _add(fields, arm + "n", 1)
    if sample.cost_pico:
        _add(fields, arm + "m", sample.cost_pico)
    if not sample.ok:
        _add(fields, arm + "e", 1)
        return
    _add(fields, f"{arm}l{bucket(sample.latency_ms)}", 1)
    if sample.ttft_ms is not None:
        _add(fields, f"{arm}t{bucket(sample.ttft_ms)}", 1)


def _add(fields: Tally, name: str, amount: int) -> None:
    fields[name] = fields.get(name, 0) + amount


def window_stats(fields: Mapping[str, int]) -> WindowStats:
    """Both arms' stats from a tally's fields; fields this version does not know are ignored."""
    arms: dict[Arm, dict[str, int]] = {"stable": {}, "candidate": {}}
    for name, value in fields.items():
        prefix, _, rest = name.partition(":")
        if prefix in _ARMS and rest:
            arms[_ARMS[prefix]][rest] = value
    return WindowStats(stable=_arm_stats(arms["stable"]), candidate=_arm_stats(arms["candidate"]))


def _arm_stats(fields: dict[str, int]) -> ArmStats:
    latency = [0] * BUCKETS
    ttft = [0] * BUCKETS
    for name, value in fields.items():
        kind, index = name[0], name[1:]
        if kind in "lt" and index.isdigit() and int(index) < BUCKETS:
            (latency if kind == "l" else ttft)[int(index)] += value
    return ArmStats(
        requests=fields.get("n", 0), errors=fields.get("e", 0), latency=tuple(latency), ttft=tuple(ttft), cost_pico=fields.get("m", 0)
    )


class SampleStore(Protocol):
    def record(self, key: str, sample: Sample) -> None:
        """Count a sample; memory only, never I/O (it runs on the request path)."""

    async def flush(self) -> None:
        """Send what this replica recorded; a store error keeps it for the next flush, never raises."""

    async def read(self, key: str) -> WindowStats:
        """Every replica's flushed counts under ``key``; raises SamplesUnavailable."""

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Flush what is left and let go of connections."""


class MemorySampleStore:
    """This process's counts. ``share_with`` makes a second store read and add to
    the first one's counts, as replicas share Redis (for tests of several replicas)."""

    def __init__(self, *, share_with: MemorySampleStore | None = None) -> None:
        self._tallies: dict[str, Tally] = share_with._tallies if share_with is not None else {}

    def record(self, key: str, sample: Sample) -> None:
        add_sample(self._tallies.setdefault(key, {}), sample)

    async def flush(self) -> None:
        return None

    async def read(self, key: str) -> WindowStats:
        return window_stats(self._tallies.get(key, {}))

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisSampleStore:
    """Counts shared by every replica: one Redis hash per key, HINCRBY per field, a TTL per key.

    Samples are buffered per key and sent by a background task every
    ``flush_interval_s`` (and by ``flush``). While Redis is unreachable the
    buffer keeps adding up; a sample for a key beyond ``max_buffered_keys`` is
    dropped and counted in ``dropped``. A flush whose reply was lost may have
    been applied: sending it again can count those samples twice, which the
    gates tolerate better than losing a failing candidate's errors.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        ttl_s: float = 86400,
        flush_interval_s: float = 0.25,
        max_buffered_keys: int = 1000,
        timeout_s: float = 1.0,
    ) -> None:
        self._redis = aioredis.Redis.from_url(
            redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1)
        )
        self._ttl_s = max(1, math.ceil(ttl_s))
        self._interval_s = flush_interval_s
        self._max_keys = max_buffered_keys
        self._pending: dict[str, Tally] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.dropped = 0

    @property
    def buffered(self) -> int:
        """Samples recorded here and not yet in Redis."""
        return sum(fields.get("s:n", 0) + fields.get("c:n", 0) for fields in self._pending.values())

    def record(self, key: str, sample: Sample) -> None:
        fields = self._pending.get(key)
        if fields is None:
            if len(self._pending) >= self._max_keys:
                self.dropped += 1
                return
            fields = self._pending[key] = {}
        add_sample(fields, sample)

    async def flush(self) -> None:
        # One flush at a time: a caller's flush then read sees everything recorded before it.
        async with self._lock:
            pending, self._pending = self._pending, {}
            if not pending:
                return
            try:
                await self._send(pending)
            except (RedisError, OSError) as exc:  # OSError covers TimeoutError
                self._keep(pending)
                if not self._failing:
                    # The class name only: messages may carry the URL and its password.
                    log.warning("canary samples: flush to Redis failed (%s); counts kept for the next try", type(exc).__name__)
                self._failing = True
                return
            except BaseException:
                self._keep(pending)  # cancelled mid-flush: close() sends them
                raise
            if self._failing:
                log.info("canary samples: flushing to Redis again")
            self._failing = False

    async def _send(self, pending: dict[str, Tally]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            for key, fields in pending.items():
                for name, amount in fields.items():
                    pipe.hincrby(key, name, amount)
                pipe.expire(key, self._ttl_s)
            await pipe.execute()

    def _keep(self, pending: dict[str, Tally]) -> None:
        """Put a failed flush's counts back in front of what was recorded meanwhile."""
        for key, fields in pending.items():
            current = self._pending.get(key)
            if current is None:
                if len(self._pending) >= self._max_keys:
                    self.dropped += fields.get("s:n", 0) + fields.get("c:n", 0)
                    continue
                current = self._pending[key] = {}
            for name, amount in fields.items():
                _add(current, name, amount)

    async def read(self, key: str) -> WindowStats:
        try:
            raw = await self._redis.hgetall(key)
        except (RedisError, OSError) as exc:  # OSError covers TimeoutError
            raise SamplesUnavailable(f"canary sample store unavailable ({type(exc).__name__})") from exc
        return window_stats({_text(name): int(value) for name, value in raw.items()})

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.flush()
            except Exception:
                log.exception("canary samples: flush failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()
        await self._redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
