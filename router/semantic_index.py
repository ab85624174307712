"""The semantic cache's vector index: which stored answer a request's embedding lies nearest to.

Two implementations share this contract: ``MemoryVectorIndex`` (one process,
brute-force cosine, bounded in entries) and ``PgVectorIndex`` (PostgreSQL with
pgvector, shared by every replica); ``tests/contract/test_semantic_index.py``
runs the same assertions against both.

An entry is a vector under a ``key`` (the cache store's key of the answer it
stands for), filed under a ``scope`` (a tenant, or a shared scope tenants opt
into) and a ``partition`` (alias, deployment version and kind). A search looks
within one scope and one partition and nowhere else: entries of another
tenant, alias or deployment never match, whatever their vectors.

Vectors are normalised to unit length on ``add`` and on ``nearest``, and the
similarity is cosine (1 is the same direction). A vector whose dimension
differs from the entries it is compared with never matches them: a search
compares only vectors of its own dimension, so an embedding model changed
under a partition is a miss, never an error. A vector that cannot be
normalised (empty, zero or not finite) is the caller's bug: ``ValueError``.

A cache must never make a request fail: an index that cannot be reached
answers ``nearest`` with None and makes ``add`` and ``delete`` do nothing,
logged once per outage by class name only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

# (key, cosine similarity) of the best match.
Match = tuple[str, float]


def normalise(vector: Sequence[float]) -> list[float]:
    """``vector`` scaled to unit length; ``ValueError`` for one that has no direction."""
    if not vector:
        raise ValueError("a vector must not be empty")
    norm = math.sqrt(math.fsum(x * x for x in vector))
    if not 0 < norm < math.inf:
        raise ValueError("a vector must be finite and not zero")
    return [x / norm for x in vector]


def check_threshold(threshold: float) -> None:
    """What every ``nearest`` must satisfy, whichever index serves it."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError("threshold must be a cosine similarity, between -1 and 1")


@runtime_checkable
class VectorIndex(Protocol):
    async def add(self, scope: str, partition: str, vector: list[float], key: str, expires_at: float) -> None:
        """File ``vector`` under ``key`` (replacing any) until ``expires_at`` (epoch seconds); a failed store drops it."""
        ...

    async def nearest(self, scope: str, partition: str, vector: list[float], threshold: float) -> Match | None:
        """The live entry of ``scope`` and ``partition`` most similar to ``vector``, if at least ``threshold``; None on failure."""
        ...

    async def delete(self, key: str) -> None:
        """Forget ``key``; nothing happens when it is absent or the store failed."""
        ...

    async def delete_expired(self) -> int:
        """Drop every expired entry; how many were dropped (0 when the store failed)."""
        ...

    async def close(self) -> None: ...
