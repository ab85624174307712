"""The production ledger: PostgreSQL through asyncpg.

A batch is COPYed (binary) into a per-connection temporary staging table and
moved into ``ledger`` with ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` in
the same transaction: COPY alone cannot skip rows that already exist, and the
conflict skip is what makes spool replay idempotent. ``write_method="unnest"``
sends the batch as column arrays in one INSERT instead; it needs no temporary
table, so it also works behind a transaction-pooling proxy (PgBouncer), but
``bench/ledger_bench.py`` measured it at roughly half COPY's rate.

The pool is created lazily, so a replica starts (and spools) while the
database is down; migrations run on the first successful connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import asyncpg
import msgspec

from budgets.ledger import BatchingLedger, LedgerOptions, LedgerRow
from budgets.ledger_query import UsageQuery, UsageRow, from_epoch_us, rows_sql, to_epoch_us, usage_rows, usage_sql
from budgets.migrate import apply_migrations

WriteMethod = Literal["copy", "unnest"]

_COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "text"), ("started_at", "timestamptz"), ("finished_at", "timestamptz"),
    ("tenant", "text"), ("key_id", "text"), ("model", "text"), ("deployment", "text"),
    ("provider", "text"), ("prompt_tokens", "bigint"), ("completion_tokens", "bigint"),
    ("cached_tokens", "bigint"), ("cost", "bigint"), ("latency_ms", "float8"), ("ttft_ms", "float8"),
    ("status", "integer"), ("error", "text"), ("route_reason", "text"), ("pii_entities", "jsonb"),
    ("trace_id", "text"), ("stream", "boolean"),
)  # fmt: skip
_NAMES = [name for name, _ in _COLUMNS]
_COLUMN_LIST = ", ".join(_NAMES)

# ON COMMIT DELETE ROWS empties the staging table at every commit, so a
# connection handed back to the pool never carries rows into the next batch.
_STAGE = "ledger_stage"
_CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ("
    + ", ".join(f"{name} {kind}" for name, kind in _COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)
_MOVE_STAGE = f"INSERT INTO ledger ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM {_STAGE} ON CONFLICT DO NOTHING"
_INSERT_UNNEST = (
    f"INSERT INTO ledger ({_COLUMN_LIST}) SELECT * FROM unnest("
    + ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(_COLUMNS, start=1))
    + ") ON CONFLICT DO NOTHING"
)
_SELECT = f"SELECT {_COLUMN_LIST} FROM ledger"
# Serialises partition creation across replicas (any fixed key will do).
_PARTITION_LOCK_KEY = 0x51_0C_65_00_00_00_00_02
_ROW_FAULTS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, ValueError, TypeError, OverflowError)
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder(dict[str, int]).decode


def _to_record(row: LedgerRow) -> tuple[object, ...]:
    # row --> COPY/unnest values, in _COLUMNS order
    return (
        row.request_id, from_epoch_us(row.started_us), from_epoch_us(row.finished_us), row.tenant, row.key_id, row.model,
        row.deployment, row.provider, row.prompt_tokens, row.completion_tokens, row.cached_tokens, row.cost,
        row.latency_ms, row.ttft_ms, row.status, row.error, row.route_reason,
        _json_encode(row.pii_entities).decode(), row.trace_id, row.stream,
    )  # fmt: skip


def _from_record(rec: asyncpg.Record) -> LedgerRow:
    values = dict(rec.items())
    values["pii_entities"] = _json_decode(values["pii_entities"])
    values["started_us"] = to_epoch_us(values.pop("started_at"))
    values["finished_us"] = to_epoch_us(values.pop("finished_at"))
    return msgspec.convert(values, LedgerRow)


def _partition_sql(year: int, month: int) -> str:
    """DDL for one month; built from integers only."""
    nxt_year, nxt_month = (year + 1, 1) if month == 12 else (year, month + 1)
    return (
        f"CREATE TABLE IF NOT EXISTS ledger_y{year:04d}m{month:02d} PARTITION OF ledger "
        f"FOR VALUES FROM ('{year:04d}-{month:02d}-01 00:00:00+00') "
        f"TO ('{nxt_year:04d}-{nxt_month:02d}-01 00:00:00+00')"
    )


class PostgresStore:
    """A :class:`~budgets.ledger.LedgerStore` on a partitioned PostgreSQL table."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 4,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float = 30.0,
        auto_migrate: bool = True,
        write_method: WriteMethod = "copy",
    ) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._auto_migrate = auto_migrate
        self._write_method = write_method
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._months: set[tuple[int, int]] = set()  # partitions known to exist

    async def open(self) -> None:
        """Nothing to do yet: connecting waits for the first use so a down database cannot stop start-up."""

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self._command_timeout_s)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            pool.terminate()

    async def _get_pool(self) -> asyncpg.Pool:
        async with self._pool_lock:
            if self._pool is not None:
                return self._pool
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=0,
                max_size=self._pool_size,
                timeout=self._connect_timeout_s,
                command_timeout=self._command_timeout_s,
                init=self._init_connection if self._write_method == "copy" else None,
            )
            try:
                if self._auto_migrate:
                    async with pool.acquire() as conn:
                        await apply_migrations(conn)
            except BaseException:
                pool.terminate()
                raise
            self._pool = pool
            return pool

    @staticmethod
    async def _init_connection(conn: asyncpg.Connection) -> None:
        await conn.execute(_CREATE_STAGE)

    async def _ensure_partitions(self, conn: asyncpg.Connection, records: list[tuple[object, ...]]) -> None:
        months = {(ts.year, ts.month) for ts in (rec[1] for rec in records) if isinstance(ts, datetime)}
        missing = sorted(months - self._months)
        if not missing:
            return
        # Created in their own short transaction: the DDL locks the parent table,
        # which must not be held for the length of a data write.
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PARTITION_LOCK_KEY)
            for year, month in missing:
                await conn.execute(_partition_sql(year, month))
        self._months.update(missing)

    async def write(self, rows: Sequence[LedgerRow]) -> None:
        if not rows:
            return
        records = [_to_record(row) for row in rows]
        pool = await self._get_pool()
        try:
            async with pool.acquire() as conn:
                await self._ensure_partitions(conn, records)
                async with conn.transaction():
                    if self._write_method == "copy":
                        await conn.copy_records_to_table(_STAGE, records=records, columns=_NAMES)
                        await conn.execute(_MOVE_STAGE)
                    else:
                        await conn.execute(_INSERT_UNNEST, *[list(col) for col in zip(*records, strict=True)])
        except BaseException:
            # A partition dropped behind our back (retention) is recreated next time.
            self._months.clear()
            raise

    async def usage(self, query: UsageQuery) -> list[UsageRow]:
        sql, params = usage_sql(query, "postgres")
        pool = await self._get_pool()
        records = await pool.fetch(sql, *params)
        return usage_rows(query, [tuple(r.values()) for r in records])

    async def rows(self, tenant: str | None, start: datetime, end: datetime, limit: int) -> list[LedgerRow]:
        tail, params = rows_sql("postgres", tenant, start, end, limit)
        pool = await self._get_pool()
        return [_from_record(rec) for rec in await pool.fetch(f"{_SELECT} {tail}", *params)]

    def refuses(self, exc: Exception) -> bool:
        # Class 22 (data exception) and 23 (integrity) come from the server; the
        # others from encoding a value client-side (an int beyond bigint, say).
        return isinstance(exc, _ROW_FAULTS)

    async def ping(self) -> bool:
        try:
            pool = await self._get_pool()
            return bool(await pool.fetchval("SELECT 1", timeout=self._connect_timeout_s) == 1)
        except Exception:  # any failure to answer means "not reachable" here
            return False


class PostgresLedger(BatchingLedger):
    """The shared ledger for many replicas; ``spool_path`` must be local and writable."""

    def __init__(
        self,
        dsn: str,
        spool_path: str,
        *,
        options: LedgerOptions | None = None,
        pool_size: int = 4,
        connect_timeout_s: float = 5.0,
        auto_migrate: bool = True,
        write_method: WriteMethod = "copy",
    ) -> None:
        store = PostgresStore(
            dsn,
            pool_size=pool_size,
            connect_timeout_s=connect_timeout_s,
            auto_migrate=auto_migrate,
            write_method=write_method,
        )
        super().__init__(store, spool_path, options)
