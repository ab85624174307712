"""The production response store: PostgreSQL through asyncpg, shared by every replica.

The table comes with the ledger's migrations (``budgets/migrations``,
``0004_responses.sql``), applied on the first connection as the ledger does;
the pool is created lazily, so a replica starts while the database is down.

Each call is one transaction bound to the tenant it names (row-level
security, ``core.pg_scope``) and ends within ``timeout_s``, connecting
included. A server that stops answering cannot hold a call past it: at the
deadline the connection is cut (a ROLLBACK or a cancel request would wait on
the same silent server), and the call fails with ``ResponseStoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg

from budgets.migrate import apply_migrations
from core.pg_scope import scope
from router.responses_records import ResponseStoreUnavailable, StoredResponse

log = logging.getLogger("sluicegate.responses")
T = TypeVar("T")

_INSERT = (
    "INSERT INTO responses (tenant, id, created_at, response, input_items, conversation)"
    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
)
_SELECT = "SELECT created_at, response, input_items, conversation FROM responses WHERE tenant = $1 AND id = $2"
_DELETE = "DELETE FROM responses WHERE tenant = $1 AND id = $2"
_FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _cut(conn: asyncpg.Connection) -> None:
    """Close a connection without a word to the server (a proxy already back in the pool has nothing to cut)."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


def _answered(exc: BaseException) -> bool:
    """The server answered (a constraint, a data error): the connection is sound."""
    return isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, asyncpg.PostgresConnectionError)


class PostgresResponseStore:
    def __init__(self, dsn: str, *, timeout_s: float = 5.0, pool_size: int = 4, auto_migrate: bool = True) -> None:
        self._dsn = dsn
        self._timeout_s = timeout_s
        self._pool_size = pool_size
        self._auto_migrate = auto_migrate
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    async def start(self) -> None:
        """Nothing to do yet: connecting waits for the first use so a down database cannot stop start-up."""

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                await pool.close()
        except _FAILURES:
            pool.terminate()

    async def _get_pool(self, deadline: float) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                t = self._timeout_s
                pool = await asyncpg.create_pool(self._dsn, min_size=0, max_size=self._pool_size, timeout=t, command_timeout=t)
                try:
                    if self._auto_migrate:
                        await self._migrate(pool, deadline)
                except BaseException:
                    pool.terminate()
                    raise
                self._pool = pool
            return self._pool

    @staticmethod
    async def _migrate(pool: asyncpg.Pool, deadline: float) -> None:
        conn = await pool.acquire()
        cut = asyncio.get_running_loop().call_at(deadline, _cut, conn)
        try:
            await apply_migrations(conn)
        except BaseException:
            _cut(conn)
            raise
        finally:
            cut.cancel()
            await pool.release(conn)

    async def _run(self, tenant: str, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``op`` in one transaction that sees ``tenant``'s rows only, within the deadline; trouble is a 503."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                pool = await self._get_pool(deadline)
                conn = await pool.acquire()
        except _FAILURES as exc:
            raise self._unavailable(exc) from None
        cut = loop.call_at(deadline, _cut, conn)
        try:
            async with asyncio.timeout_at(deadline):
                transaction = conn.transaction()
                await transaction.start()
                try:
                    await scope(conn, tenant)
                    result = await op(conn)
                except BaseException as exc:
                    if _answered(exc):
                        await transaction.rollback()
                    raise
                await transaction.commit()
                return result
        except BaseException as exc:
            if not _answered(exc):
                _cut(conn)  # timed out, cut or cancelled: no clean-up round trip to a silent server
            if isinstance(exc, _FAILURES):
                raise self._unavailable(exc) from None
            raise
        finally:
            try:
                await pool.release(conn)  # at once for a connection that was cut
            finally:
                cut.cancel()

    @staticmethod
    def _unavailable(exc: BaseException) -> ResponseStoreUnavailable:
        log.warning("response store call failed: %s", type(exc).__name__)
        return ResponseStoreUnavailable("The response store is unavailable; try again shortly.", retry_after=1)

    async def put(self, record: StoredResponse) -> None:
        r = record
        created = datetime.fromtimestamp(r.created_at, UTC)
        values = (r.tenant, r.id, created, r.response, r.input_items, r.conversation)
        await self._run(r.tenant, lambda conn: conn.execute(_INSERT, *values))

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        row = await self._run(tenant, lambda conn: conn.fetchrow(_SELECT, tenant, response_id))
        if row is None:
            return None
        return StoredResponse(
            id=response_id,
            tenant=tenant,
            created_at=int(row["created_at"].timestamp()),
            response=bytes(row["response"]),
            input_items=bytes(row["input_items"]),
            conversation=bytes(row["conversation"]),
        )

    async def delete(self, tenant: str, response_id: str) -> bool:
        status: str = await self._run(tenant, lambda conn: conn.execute(_DELETE, tenant, response_id))
        return status != "DELETE 0"
