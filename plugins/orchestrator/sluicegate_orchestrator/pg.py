"""PostgreSQL calls that each run in one transaction bound to a tenant, within a deadline.

The same discipline as the gateway's stores: the pool is made on the first
call (a worker starts while the database is down) and the orchestrator's
migrations are applied then; every call ends within ``timeout_s``, connecting
included, and at the deadline the connection is cut rather than asked to roll
back (a silent server would not answer that either). Trouble with the
database is ``TaskStoreUnavailable``; an exception from the caller's own code
rolls back and is raised as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from core.pg_scope import scope
from sluicegate_orchestrator.migrate import apply_migrations
from sluicegate_orchestrator.model import TaskStoreUnavailable

T = TypeVar("T")
log = logging.getLogger("sluicegate.orchestrator")
FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
# The connection itself is in doubt after these: it is cut, never asked to roll back.
_BROKEN = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError, asyncio.CancelledError)


def _cut(conn: asyncpg.Connection) -> None:
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


class PgCalls:
    def __init__(self, dsn: str, *, timeout_s: float = 5.0, pool_size: int = 4, auto_migrate: bool = True) -> None:
        self._dsn = dsn
        self._timeout_s = timeout_s
        self._pool_size = pool_size
        self._auto_migrate = auto_migrate
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                await pool.close()
        except FAILURES:
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
                        async with pool.acquire() as conn:
                            cut = asyncio.get_running_loop().call_at(deadline, _cut, conn)
                            try:
                                await apply_migrations(conn)
                            finally:
                                cut.cancel()
                except BaseException:
                    pool.terminate()
                    raise
                self._pool = pool
            return self._pool

    async def run(self, tenant: str | None, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``op`` in one transaction that sees ``tenant``'s rows only (None: every tenant's), within the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                pool = await self._get_pool(deadline)
                conn = await pool.acquire()
        except FAILURES as exc:
            raise _failed(exc) from None
        cut = loop.call_at(deadline, _cut, conn)
        try:
            async with asyncio.timeout_at(deadline):
                transaction = conn.transaction()
                await transaction.start()
                try:
                    await scope(conn, tenant)
                    result = await op(conn)
                except BaseException as exc:
                    if not isinstance(exc, _BROKEN):
                        await transaction.rollback()
                    raise
                await transaction.commit()
                return result
        except BaseException as exc:
            if isinstance(exc, _BROKEN):
                _cut(conn)
            if isinstance(exc, FAILURES):
                raise _failed(exc) from None
            raise
        finally:
            try:
                await pool.release(conn)
            finally:
                cut.cancel()


def _failed(exc: BaseException) -> TaskStoreUnavailable:
    log.warning("event=store.failed error=%s", type(exc).__name__)
    return TaskStoreUnavailable("The task store is unavailable; try again shortly.", retry_after=1)
