"""The production response store: PostgreSQL through asyncpg, shared by every replica.

The table comes with the ledger's migrations (``budgets/migrations``,
``0004_responses.sql``), applied on the first connection as the ledger does;
the pool is created lazily, so a replica starts while the database is down.

Each call is one transaction bound to the tenant it names (row-level
security, ``core.pg_scope``) and ends within ``timeout_s``, connecting
included (``router.pg_calls``): a server that stops answering cannot hold a
call past it, and the call fails with ``ResponseStoreUnavailable``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from router.pg_calls import PgCalls
from router.responses_records import ResponseStoreUnavailable, StoredResponse

log = logging.getLogger("sluicegate.responses")

_INSERT = (
    "INSERT INTO responses (tenant, id, created_at, response, input_items, conversation)"
    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
)
_SELECT = "SELECT created_at, response, input_items, conversation FROM responses WHERE tenant = $1 AND id = $2"
_DELETE = "DELETE FROM responses WHERE tenant = $1 AND id = $2"


def _unavailable() -> ResponseStoreUnavailable:
    return ResponseStoreUnavailable("The response store is unavailable; try again shortly.", retry_after=1)


class PostgresResponseStore:
    def __init__(self, dsn: str, *, timeout_s: float = 5.0, pool_size: int = 4, auto_migrate: bool = True) -> None:
        self._calls = PgCalls(dsn, unavailable=_unavailable, log=log, timeout_s=timeout_s, pool_size=pool_size, auto_migrate=auto_migrate)
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
