"""The production response store: PostgreSQL through asyncpg, shared by every replica.

The table comes with the ledger's migrations (``budgets/migrations``,
``0004_responses.sql``), applied on the first connection as the ledger does;
the pool is created lazily, so a replica starts while the database is down.

Each call is one transaction bound to the tenant it names (row-level
security, ``core.pg_scope``) and ends within ``timeout_s``, connecting
included (``router.pg_calls``): a server that stops answering cannot hold a
call past it, and the call fails with ``ResponseStoreUnavailable``.

Reads and deletes skip expired rows (``Retention``). The sweep is the one call
that sees every tenant's rows: it deletes a batch of the oldest expired rows
(index ``responses_created``, ``0007_responses_expiry.sql``). Replicas may
sweep at once: an advisory lock lets one of them work at a time, and even
without it a row two of them pick would be deleted and counted by one.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import asyncpg

from budgets.migrate import apply_migrations
from core.pg_calls import PgCalls
from router.responses_records import ResponseStoreUnavailable, Retention, StoredResponse

log = logging.getLogger("sluicegate.responses")

_INSERT = (
    "INSERT INTO responses (tenant, id, created_at, response, input_items, conversation)"
    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
)
# $3: the expiry cutoff (NULL: responses never expire); an expired row is as absent as a missing one.
_ALIVE = "($3::timestamptz IS NULL OR created_at > $3::timestamptz)"
_SELECT = f"SELECT created_at, response, input_items, conversation FROM responses WHERE tenant = $1 AND id = $2 AND {_ALIVE}"
_DELETE = f"DELETE FROM responses WHERE tenant = $1 AND id = $2 AND {_ALIVE}"
# One replica sweeps at a time; the others find the lock taken and leave it to that one.
SWEEP_LOCK_KEY = 0x51_0C_65_00_00_00_00_05
_TRY_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
_SWEEP = (
    "DELETE FROM responses WHERE (tenant, id) IN (SELECT tenant, id FROM responses WHERE created_at <= $1 ORDER BY created_at LIMIT $2)"
)


def _unavailable() -> ResponseStoreUnavailable:
    return ResponseStoreUnavailable("The response store is unavailable; try again shortly.", retry_after=1)


def _deleted(status: str) -> int:
    # asyncpg answers a DELETE with its command tag, "DELETE <rows>".
    return int(status.rsplit(" ", 1)[1])


class PostgresResponseStore:
    def __init__(
        self, dsn: str, retention: Retention | None = None, *, timeout_s: float = 5.0, pool_size: int = 4, auto_migrate: bool = True,
    ) -> None:  # fmt: skip
        self.retention = retention if retention is not None else Retention()
        self._calls = PgCalls(
            dsn,
            unavailable=_unavailable,
            log=log,
            migrate=apply_migrations if auto_migrate else None,
            timeout_s=timeout_s,
            pool_size=pool_size,
        )
        self._run = self._calls.run

    async def start(self) -> None:
        """Nothing to do yet: connecting waits for the first use so a down database cannot stop start-up."""

    async def close(self) -> None:
        await self._calls.close()

    async def put(self, record: StoredResponse) -> None:
        r = record
        created = datetime.fromtimestamp(r.created_at, UTC)
        values = (r.tenant, r.id, created, r.response, r.input_items, r.conversation)
        await self._run(r.tenant, lambda conn: conn.execute(_INSERT, *values))

    def _cutoff(self) -> datetime | None:
        cutoff = self.retention.cutoff()
        return None if cutoff is None else datetime.fromtimestamp(cutoff, UTC)

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        cutoff = self._cutoff()
        row = await self._run(tenant, lambda conn: conn.fetchrow(_SELECT, tenant, response_id, cutoff))
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
        cutoff = self._cutoff()
        status: str = await self._run(tenant, lambda conn: conn.execute(_DELETE, tenant, response_id, cutoff))
        return _deleted(status) > 0

    async def sweep(self, limit: int) -> int:
        cutoff = self._cutoff()
        if cutoff is None:
            return 0

        async def sweep(conn: asyncpg.Connection) -> int:
            if not await conn.fetchval(_TRY_LOCK, SWEEP_LOCK_KEY):
                return 0
            return _deleted(await conn.execute(_SWEEP, cutoff, limit))

        # Every tenant's rows (None): expiry is the same for all of them.
        return await self._run(None, sweep)
