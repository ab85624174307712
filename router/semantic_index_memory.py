"""The embedded vector index: this process's entries, bounded in number, searched by brute force.

Each (scope, partition, dimension) is a bucket of unit vectors; a search is
one matrix-vector product over its bucket (NumPy), the stacked matrix kept
until the bucket changes. Every method runs to completion without awaiting,
so on one event loop each is atomic without a lock.

Bounded by ``max_entries``: adding past it drops the oldest entries first
(added earliest; an alias's entries share one time to live, so those expire
first too). Expired entries are dropped when a search meets them, or by
``delete_expired``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from router.semantic_index import Match, check_threshold, normalise

Vector = npt.NDArray[np.float64]
# (scope, partition, dimension): vectors are only ever compared within one.
BucketId = tuple[str, str, int]


class _Bucket:
    def __init__(self) -> None:
        # key --> (unit vector, when it expires)
        self.vectors: dict[str, tuple[Vector, float]] = {}
        # The vectors stacked (rows in ``keys`` order) and their expiry, rebuilt after a change.
        self.stacked: tuple[list[str], Vector, Vector] | None = None

    def matrix(self) -> tuple[list[str], Vector, Vector]:
        if self.stacked is None:
            keys = list(self.vectors)
            rows = np.stack([self.vectors[k][0] for k in keys])
            expiry = np.array([self.vectors[k][1] for k in keys], dtype=np.float64)
            self.stacked = (keys, rows, expiry)
        return self.stacked


class MemoryVectorIndex:
    def __init__(self, max_entries: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        """``clock`` gives epoch seconds, the scale of ``expires_at`` (tests move time by hand)."""
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self._max_entries = max_entries
        self._clock = clock
        # key --> its bucket, oldest added first.
        self._entries: OrderedDict[str, BucketId] = OrderedDict()
        self._buckets: dict[BucketId, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def add(self, scope: str, partition: str, vector: list[float], key: str, expires_at: float) -> None:
        unit = np.array(normalise(vector), dtype=np.float64)
        self._drop(key)
        while len(self._entries) >= self._max_entries:
            oldest = next(iter(self._entries))
            self._drop(oldest)
        bucket_id = (scope, partition, len(unit))
        bucket = self._buckets.setdefault(bucket_id, _Bucket())
        bucket.vectors[key] = (unit, expires_at)
        bucket.stacked = None
        self._entries[key] = bucket_id

    async def nearest(self, scope: str, partition: str, vector: list[float], threshold: float) -> Match | None:
        check_threshold(threshold)
        query = np.array(normalise(vector), dtype=np.float64)
        bucket = self._buckets.get((scope, partition, len(query)))
        if bucket is None:
            return None
        keys, rows, expiry = bucket.matrix()
        live = expiry > self._clock()
        similarity = np.where(live, rows @ query, -np.inf)
        best = int(np.argmax(similarity))
        found = (keys[best], min(1.0, float(similarity[best])))
        for n in np.flatnonzero(~live):
            self._drop(keys[n])
        return found if found[1] >= threshold else None

    async def delete(self, key: str) -> None:
        self._drop(key)

    async def delete_expired(self) -> int:
        now = self._clock()
        expired = [key for key, bucket_id in self._entries.items() if self._buckets[bucket_id].vectors[key][1] <= now]
        for key in expired:
            self._drop(key)
        return len(expired)

    async def close(self) -> None:
        self._entries.clear()
        self._buckets.clear()

    def _drop(self, key: str) -> None:
        bucket_id = self._entries.pop(key, None)
        if bucket_id is None:
            return
        bucket = self._buckets[bucket_id]
        del bucket.vectors[key]
        bucket.stacked = None
        if not bucket.vectors:
            del self._buckets[bucket_id]
