"""The production batch store: records and result lines in PostgreSQL, shared by every replica.

The tables come with the ledger's migrations (``budgets/migrations``,
``0006_batches.sql``), applied on the first connection. A record is one row
of ``batches`` (the JSON the embedded store writes to its file, with its
status and creation time beside it); ``update`` reads it ``FOR UPDATE``,
applies the change and writes it back in one transaction, so a cancel from
one replica and the runner's progress from another never overwrite each
other. Result lines are rows of ``batch_parts``, one per ``append``, read back
in order a page of rows at a time (so a long read holds no transaction);
only the replica holding a batch's claim appends to it, one append at a
time. They stay in the database, rather than the file store, because they
come as many small appends (S3 has no append) and go once the batch's files
are written.

Every call is one transaction bound to the tenant it names (row-level
security, ``core.pg_scope``); the runner's look at unfinished batches and the
claims (``router.batch_claims.PostgresClaims``) see every tenant's. Trouble
with the database is ``BatchStoreUnavailable`` (503), within ``timeout_s``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from functools import partial

import asyncpg
import msgspec

from budgets.migrate import apply_migrations
from core.pg_calls import PgCalls
from router.batch_records import BatchRecord, BatchStoreUnavailable, Part
from router.batch_store import valid_batch_id

log = logging.getLogger("sluicegate.batches")
# Rows of result lines fetched per round trip when a part is read.
READ_ROWS = 32

_INSERT = "INSERT INTO batches (tenant, id, created_ns, status, record) VALUES ($1, $2, $3, $4, $5)"
_GET = "SELECT record FROM batches WHERE tenant = $1 AND id = $2"
_LOCK = "SELECT record FROM batches WHERE tenant = $1 AND id = $2 FOR UPDATE"
_WRITE = "UPDATE batches SET status = $3, record = $4 WHERE tenant = $1 AND id = $2"
_PAGE = (
    "SELECT record FROM batches WHERE tenant = $1"
    " AND ($2::text IS NULL OR (created_ns, id) < (SELECT created_ns, id FROM batches WHERE tenant = $1 AND id = $2))"
    " ORDER BY created_ns DESC, id DESC LIMIT $3"
)
# The statuses of ``batch_records.ACTIVE``, spelled as the partial index ``batches_unfinished`` is.
ACTIVE_SQL = "('validating', 'in_progress', 'finalizing', 'cancelling')"
_ACTIVE = f"SELECT tenant, id FROM batches WHERE status IN {ACTIVE_SQL}"
_APPEND = "INSERT INTO batch_parts (tenant, batch_id, part, lines) VALUES ($1, $2, $3, $4)"
_READ = "SELECT seq, lines FROM batch_parts WHERE tenant = $1 AND batch_id = $2 AND part = $3 AND seq > $4 ORDER BY seq LIMIT $5"
_DROP = "DELETE FROM batch_parts WHERE tenant = $1 AND batch_id = $2"

_encode = msgspec.json.encode
_decode = msgspec.json.Decoder(BatchRecord).decode


def _unavailable() -> BatchStoreUnavailable:
    return BatchStoreUnavailable("The batch store is unavailable; try again shortly.", retry_after=1)


class PostgresBatchStore:
    def __init__(self, dsn: str, *, timeout_s: float = 5.0, pool_size: int = 4, auto_migrate: bool = True) -> None:
        self.calls = PgCalls(
            dsn,
            unavailable=_unavailable,
            log=log,
            migrate=apply_migrations if auto_migrate else None,
            timeout_s=timeout_s,
            pool_size=pool_size,
        )

    async def start(self) -> None:
        """Nothing to do yet: connecting waits for the first use so a down database cannot stop start-up."""

    async def close(self) -> None:
        await self.calls.close()

    async def create(self, record: BatchRecord) -> None:
        r = record
        values = (r.tenant, r.batch.id, r.created_ns, r.batch.status, _encode(r))
        await self.calls.run(r.tenant, lambda conn: conn.execute(_INSERT, *values))

    async def get(self, tenant: str, batch_id: str) -> BatchRecord | None:
        if not valid_batch_id(batch_id):
            return None
        raw = await self.calls.run(tenant, lambda conn: conn.fetchval(_GET, tenant, batch_id))
        return _record(tenant, raw)

    async def page(self, tenant: str, *, after: str | None, limit: int) -> tuple[list[BatchRecord], bool]:
        rows = await self.calls.run(tenant, lambda conn: conn.fetch(_PAGE, tenant, after, limit + 1))
        records = [r for r in (_record(tenant, row["record"]) for row in rows) if r is not None]
        return records[:limit], len(rows) > limit

    async def update(self, tenant: str, batch_id: str, change: Callable[[BatchRecord], BatchRecord]) -> BatchRecord | None:
        if not valid_batch_id(batch_id):
            return None

        async def apply(conn: asyncpg.Connection) -> BatchRecord | None:
            record = _record(tenant, await conn.fetchval(_LOCK, tenant, batch_id))
            if record is None:
                return None
            new = change(record)  # a BatchConflict raised here rolls back, the row untouched
            if new is not record:
                await conn.execute(_WRITE, tenant, batch_id, new.batch.status, _encode(new))
            return new

        return await self.calls.run(tenant, apply)

    async def active(self) -> list[tuple[str, str]]:
        rows = await self.calls.run(None, lambda conn: conn.fetch(_ACTIVE))
        return [(str(row["tenant"]), str(row["id"])) for row in rows]

    async def append(self, tenant: str, batch_id: str, part: Part, lines: bytes) -> None:
        await self.calls.run(tenant, lambda conn: conn.execute(_APPEND, tenant, batch_id, part, lines))

    async def read(self, tenant: str, batch_id: str, part: Part) -> AsyncIterator[bytes]:
        last = 0
        whole = True  # whether what was yielded so far ends a line
        while True:
            rows = await self.calls.run(tenant, partial(_fetch_after, tenant, batch_id, part, last))
            for row in rows:
                lines = bytes(row["lines"])
                if not lines:
                    continue
                if not whole:
                    yield b"\n"  # a line a crash cut short stays on a line of its own, as in the embedded store
                yield lines
                whole = lines.endswith(b"\n")
            if len(rows) < READ_ROWS:
                return
            last = int(rows[-1]["seq"])

    async def drop_parts(self, tenant: str, batch_id: str) -> None:
        await self.calls.run(tenant, lambda conn: conn.execute(_DROP, tenant, batch_id))


async def _fetch_after(tenant: str, batch_id: str, part: Part, last: int, conn: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(_READ, tenant, batch_id, part, last, READ_ROWS)
    return rows


def _record(tenant: str, raw: bytes | None) -> BatchRecord | None:
    if raw is None:
        return None
    try:
        record = _decode(bytes(raw))
    except msgspec.DecodeError:
        return None  # not one of ours: never served
    return record if record.tenant == tenant else None
