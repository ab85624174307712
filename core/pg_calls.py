"""Calls to PostgreSQL that each run in one transaction bound to a tenant, within a deadline.

Shared by the stores that keep tenant-scoped rows (responses, batches, the
orchestrator plugin's tasks). The pool is created on the first call (a replica
starts while the database is down) and the store's migrations (``migrate``)
are applied then. Each call ends within ``timeout_s``, connecting included:
at the deadline the connection is cut (a ROLLBACK or a cancel request would
wait on the same silent server) and the call fails with the store's own
503. An exception raised by the caller's code inside the transaction (a
``BatchConflict`` from a status change) rolls back and is raised as it is,
the connection kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from core.errors import GatewayError
from core.pg_scope import scope

T = TypeVar("T")
Migrate = Callable[[asyncpg.Connection], Awaitable[object]]
FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
# The connection itself is in doubt after these: it is cut, never asked to roll back.
_BROKEN = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError, asyncio.CancelledError)


def _cut(conn: asyncpg.Connection) -> None:
    """Close a connection without a word to the server (a proxy already back in the pool has nothing to cut)."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


def _raise_if_cancelling() -> None:
    """A failure met while the caller is being cancelled (a cut connection's error) is that cancel, not an outage."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class PgCalls:
    def __init__(
        self, dsn: str, *, unavailable: Callable[[], GatewayError], log: logging.Logger, migrate: Migrate | None,
        timeout_s: float = 5.0, pool_size: int = 4,
    ) -> None:  # fmt: skip
        self._dsn = dsn
        self._unavailable = unavailable
        self._log = log
        self._timeout_s = timeout_s
        self._pool_size = pool_size
        self._migrations = migrate
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
                    if self._migrations is not None:
                        await self._migrate(pool, deadline, self._migrations)
                except BaseException:
                    pool.terminate()
                    raise
                self._pool = pool
            return self._pool

    @staticmethod
    async def _migrate(pool: asyncpg.Pool, deadline: float, migrate: Migrate) -> None:
        conn = await pool.acquire()
        cut = asyncio.get_running_loop().call_at(deadline, _cut, conn)
        try:
            await migrate(conn)
        except BaseException:
            _cut(conn)
            raise
        finally:
            cut.cancel()
            await pool.release(conn)

    async def run(self, tenant: str | None, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``op`` in one transaction that sees ``tenant``'s rows only (None: every tenant's), within the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                pool = await self._get_pool(deadline)
                conn = await pool.acquire()
        except FAILURES as exc:
            _raise_if_cancelling()
            raise self._failed(exc) from None
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
                _cut(conn)  # timed out, cut or cancelled: no clean-up round trip to a silent server
            if isinstance(exc, FAILURES):
                _raise_if_cancelling()
                raise self._failed(exc) from None
            raise
        finally:
            try:
                await pool.release(conn)  # at once for a connection that was cut
            finally:
                cut.cancel()

    def _failed(self, exc: BaseException) -> GatewayError:
        self._log.warning("database call failed: %s", type(exc).__name__)
        return self._unavailable()
