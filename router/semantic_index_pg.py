"""The vector index shared by every replica: PostgreSQL with the pgvector extension.

One row per entry (``router/semantic_migrations``), its vector unit length;
a search is ``ORDER BY embedding <=> query LIMIT 1`` over the live rows of one
scope, partition and dimension, the similarity ``1 - cosine distance``. The
table and the extension are created on first use (``CREATE EXTENSION`` needs
a role allowed to create it, or an operator who did so beforehand); the rows
are not under row-level security, so every statement names its scope.

A cache must never slow a request down: each call ends within ``timeout_s``
(``core.pg_calls``, connecting included), and after a failure calls skip the
database for ``retry_after_s``, answering a miss at once. An outage is logged
once, by class name only; a vector or a key never reaches a log line.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg

from core.errors import GatewayError
from core.migrate import Source, apply_migrations
from core.pg_calls import PgCalls
from router.semantic_index import Match, check_threshold, normalise

log = logging.getLogger("sluicegate.semantic_cache")

T = TypeVar("T")
SOURCE: Source = ("semantic_cache", Path(__file__).with_name("semantic_migrations"))

_ADD = """
INSERT INTO semantic_cache_index (key, scope, partition, dims, embedding, expires_at)
VALUES ($1, $2, $3, $4, $5::text::vector, $6)
ON CONFLICT (key) DO UPDATE SET
    scope = EXCLUDED.scope, partition = EXCLUDED.partition, dims = EXCLUDED.dims,
    embedding = EXCLUDED.embedding, expires_at = EXCLUDED.expires_at
"""
_NEAREST = """
SELECT key, 1 - (embedding <=> $4::text::vector) AS similarity
FROM semantic_cache_index
WHERE scope = $1 AND partition = $2 AND dims = $3 AND expires_at > $5
ORDER BY embedding <=> $4::text::vector
LIMIT 1
"""


class _Down(GatewayError):
    status = 503


def _down() -> GatewayError:
    return _Down("the semantic cache index is unavailable")


async def _migrate(conn: asyncpg.Connection) -> None:
    await apply_migrations(conn, [SOURCE])


def _literal(unit: list[float]) -> str:
    """pgvector's text form, ``[x,y,...]``: no codec to register on every connection."""
    return "[" + ",".join(repr(x) for x in unit) + "]"


class PgVectorIndex:
    def __init__(
        self, dsn: str, *, timeout_s: float = 0.5, retry_after_s: float = 1.0, pool_size: int = 4,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        """``clock`` gives epoch seconds, the scale of ``expires_at`` (tests move time by hand)."""
        if timeout_s <= 0 or retry_after_s < 0:
            raise ValueError("timeout_s must be positive, retry_after_s not negative")
        self._calls = PgCalls(dsn, unavailable=_down, log=log, migrate=_migrate, timeout_s=timeout_s, pool_size=pool_size)
        self._retry_after_s = retry_after_s
        self._clock = clock
        # Until when calls skip the database (monotonic seconds), and whether a failure was logged since the last success.
        self._resting_until = -math.inf
        self._failing = False

    async def add(self, scope: str, partition: str, vector: list[float], key: str, expires_at: float) -> None:
        unit = normalise(vector)

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(_ADD, key, scope, partition, len(unit), _literal(unit), expires_at)

        await self._call(op, None)

    async def nearest(self, scope: str, partition: str, vector: list[float], threshold: float) -> Match | None:
        check_threshold(threshold)
        unit = normalise(vector)

        async def op(conn: asyncpg.Connection) -> Match | None:
            row = await conn.fetchrow(_NEAREST, scope, partition, len(unit), _literal(unit), self._clock())
            return None if row is None else (str(row["key"]), min(1.0, float(row["similarity"])))

        found = await self._call(op, None)
        return found if found is not None and found[1] >= threshold else None

    async def delete(self, key: str) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute("DELETE FROM semantic_cache_index WHERE key = $1", key)

        await self._call(op, None)

    async def delete_expired(self) -> int:
        async def op(conn: asyncpg.Connection) -> int:
            status = await conn.execute("DELETE FROM semantic_cache_index WHERE expires_at <= $1", self._clock())
            return int(status.rsplit(" ", 1)[1])

        return await self._call(op, 0)

    async def close(self) -> None:
        await self._calls.close()

    async def _call(self, op: Callable[[asyncpg.Connection], Awaitable[T]], failed: T) -> T:
        """``op``'s answer, or ``failed`` when the database is resting or fails now (logged once per outage)."""
        if time.monotonic() < self._resting_until:
            return failed
        try:
            answer = await self._calls.run(None, op)
        except _Down:
            self._resting_until = time.monotonic() + self._retry_after_s
            if not self._failing:
                self._failing = True
                log.warning("semantic cache index failed; serving without it until it answers")
            return failed
        if self._failing:
            self._failing = False
            log.info("semantic cache index answers again")
        return answer
