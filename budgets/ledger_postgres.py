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

Every call has a deadline: ``timeout_s`` for the writer's calls (connecting,
migrating, writing a batch, ping, close) and ``query_timeout_s`` for reports.
``asyncio.timeout`` alone cannot keep one against a server that hangs: the
cancelled call's clean-up (ROLLBACK, asyncpg's cancel request, the pool's
reset) talks to the same silent server. So at the deadline the connection is
cut, and everything waiting on it fails at once.

Row-level security (``core.pg_scope``): each call runs in a transaction bound
to the tenant it asks about; the writer's batches mix tenants and run under
``ALL``. Monthly partitions are added through ``ledger_partition()``
(migration 0002), which puts each under the same policy.

The rollups (``ledger_hourly``, ``ledger_daily``; migration 0010) are kept by
a statement trigger on ``ledger`` in the transaction of each batch, from the
rows the insert added (a replayed duplicate adds none), so every writer keeps
them, an older replica during a rolling upgrade included. Usage reports read
them where they can (``budgets.ledger_usage``), and the raw rows where a role may not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Literal

import asyncpg
import msgspec

from budgets import ledger_query
from budgets.ledger import BatchingLedger, LedgerOptions
from budgets.ledger_query import (
    UsageQuery,
    UsageRow,
    UsageSource,
    from_epoch_us,
    rows_sql,
    to_epoch_us,
    usage_rows,
)
from budgets.ledger_row import LedgerRow
from budgets.ledger_usage import reads_rollup, usage_sql
from budgets.migrate import apply_migrations
from core.pg_scope import scope

WriteMethod = Literal["copy", "unnest"]

logger = logging.getLogger(__name__)

_COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "text"), ("started_at", "timestamptz"), ("finished_at", "timestamptz"),
    ("tenant", "text"), ("key_id", "text"), ("model", "text"), ("deployment", "text"),
    ("provider", "text"), ("prompt_tokens", "bigint"), ("completion_tokens", "bigint"),
    ("cached_tokens", "bigint"), ("cost", "bigint"), ("latency_ms", "float8"), ("ttft_ms", "float8"),
    ("status", "integer"), ("error", "text"), ("route_reason", "text"), ("pii_entities", "jsonb"),
    ("trace_id", "text"), ("stream", "boolean"), ("config_version", "integer"), ("arm", "text"),
    ("batch_id", "text"), ("cache", "text"), ("cache_entry", "text"), ("saved", "bigint"),
    ("guardrail", "text"),
)  # fmt: skip
_NAMES = [name for name, _ in _COLUMNS]
_COLUMN_LIST = ", ".join(_NAMES)

# ON COMMIT DELETE ROWS empties the staging table at every commit, so a
# connection handed back to the pool never carries rows into the next batch.
_STAGE = "ledger_stage"
_CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (" + ", ".join(f"{name} {kind}" for name, kind in _COLUMNS) + ") ON COMMIT DELETE ROWS"
)
_MOVE_STAGE = f"INSERT INTO ledger ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM {_STAGE} ON CONFLICT DO NOTHING"
_INSERT_UNNEST = (
    f"INSERT INTO ledger ({_COLUMN_LIST}) SELECT * FROM unnest("
    + ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(_COLUMNS, start=1))
    + ") ON CONFLICT DO NOTHING"
)
_SELECT = f"SELECT {_COLUMN_LIST} FROM ledger"
# Creates a month's partition if missing, under the tenant policy, as the table's owner.
_PARTITION = "SELECT ledger_partition($1, $2)"
_ROW_FAULTS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, ValueError, TypeError, OverflowError)
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder(dict[str, int]).decode


def _to_record(row: LedgerRow) -> tuple[object, ...]:
    # row --> COPY/unnest values, in _COLUMNS order
    return (
        row.request_id, from_epoch_us(row.started_us), from_epoch_us(row.finished_us), row.tenant, row.key_id, row.model,
        row.deployment, row.provider, row.prompt_tokens, row.completion_tokens, row.cached_tokens, row.cost,
        row.latency_ms, row.ttft_ms, row.status, row.error, row.route_reason,
        _json_encode(row.pii_entities).decode(), row.trace_id, row.stream, row.config_version, row.arm,
        row.batch_id, row.cache, row.cache_entry, row.saved, row.guardrail,
    )  # fmt: skip


def _from_record(rec: asyncpg.Record) -> LedgerRow:
    values = dict(rec.items())
    values["pii_entities"] = _json_decode(values["pii_entities"])
    values["started_us"] = to_epoch_us(values.pop("started_at"))
    values["finished_us"] = to_epoch_us(values.pop("finished_at"))
    return msgspec.convert(values, LedgerRow)


def _answered(exc: BaseException) -> bool:
    """The server answered (a constraint, a data error): the connection is sound."""
    return isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, asyncpg.PostgresConnectionError)


class PostgresStore:
    """A :class:`~budgets.ledger_row.LedgerStore` on a partitioned PostgreSQL table."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 4,
        timeout_s: float = 5.0,
        query_timeout_s: float = 30.0,
        auto_migrate: bool = True,
        write_method: WriteMethod = "copy",
    ) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._timeout_s = timeout_s
        self._query_timeout_s = query_timeout_s
        self._auto_migrate = auto_migrate
        self._write_method = write_method
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._months: set[tuple[int, int]] = set()  # partitions known to exist
        self._rollup_warned = False

    async def open(self) -> None:
        """Nothing to do yet: connecting waits for the first use so a down database cannot stop start-up."""

    async def close(self, timeout_s: float | None = None) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self._timeout_s if timeout_s is None else timeout_s):
                await pool.close()
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pool.terminate()

    async def _get_pool(self, deadline: float) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is not None:
                return self._pool
            # min_size=0: creating the pool opens no connection; the first acquire does.
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=0,
                max_size=self._pool_size,
                timeout=self._timeout_s,
                # Also bounds asyncpg's own background cancel requests.
                command_timeout=self._timeout_s,
                init=self._init_connection if self._write_method == "copy" else None,
            )
            try:
                if self._auto_migrate:
                    async with _checkout(pool, deadline) as conn:
                        await apply_migrations(conn)
            except BaseException:
                pool.terminate()
                raise
            self._pool = pool
            return pool

    @contextlib.asynccontextmanager
    async def _connection(self, timeout_s: float) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for one call that ends within ``timeout_s``, connecting included."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        async with asyncio.timeout_at(deadline):
            pool = await self._get_pool(deadline)
        async with _checkout(pool, deadline) as conn:
            yield conn

    @staticmethod
    async def _init_connection(conn: asyncpg.Connection) -> None:
        await conn.execute(_CREATE_STAGE)

    async def _ensure_partitions(self, conn: asyncpg.Connection, records: list[tuple[object, ...]]) -> None:
        months = {(ts.year, ts.month) for ts in (rec[1] for rec in records) if isinstance(ts, datetime)}
        missing = sorted(months - self._months)
        if not missing:
            return
        # Each in a short transaction of its own (the statement's): the DDL locks
        # the parent table, which must not be held for the length of a data write.
        for year, month in missing:
            await conn.execute(_PARTITION, year, month)
        self._months.update(missing)

    async def write(self, rows: Sequence[LedgerRow]) -> None:
        if not rows:
            return
        records = [_to_record(row) for row in rows]
        try:
            async with self._connection(self._timeout_s) as conn:
                await self._ensure_partitions(conn, records)
                async with _scoped(conn, None):  # a batch mixes tenants
                    if self._write_method == "copy":
                        await conn.copy_records_to_table(_STAGE, records=records, columns=_NAMES)
                        await conn.execute(_MOVE_STAGE)
                    else:
                        await conn.execute(_INSERT_UNNEST, *[list(col) for col in zip(*records, strict=True)])
        except BaseException:
            # A partition dropped behind our back (retention) is recreated next time.
            self._months.clear()
            raise

    async def _fetch(self, tenant: str | None, sql: str, params: list[object]) -> list[asyncpg.Record]:
        """One query in a read-only transaction that sees ``tenant``'s rows only (None: every tenant's)."""
        async with self._connection(self._query_timeout_s) as conn, _scoped(conn, tenant, readonly=True):
            records: list[asyncpg.Record] = await conn.fetch(sql, *params, timeout=self._query_timeout_s)
            return records

    async def usage(self, query: UsageQuery, source: UsageSource = "auto") -> list[UsageRow]:
        if source == "auto" and reads_rollup(query):
            try:
                return await self._usage(query, *usage_sql(query, "postgres"))
            except (asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedTableError) as exc:
                # Not migrated yet (auto_migrate off), or the role lacks SELECT on the rollups: the rows still answer.
                if not self._rollup_warned:
                    logger.warning("ledger: usage reports read the raw rows: the rollups are not readable (%s)", exc)
                    self._rollup_warned = True
        return await self._usage(query, *ledger_query.usage_sql(query, "postgres"))

    async def _usage(self, query: UsageQuery, sql: str, params: list[object]) -> list[UsageRow]:
        records = await self._fetch(query.tenant, sql, params)
        return usage_rows(query, [tuple(r.values()) for r in records])

    async def rows(self, tenant: str | None, start: datetime, end: datetime, limit: int) -> list[LedgerRow]:
        tail, params = rows_sql("postgres", tenant, start, end, limit)
        return [_from_record(rec) for rec in await self._fetch(tenant, f"{_SELECT} {tail}", params)]

    def refuses(self, exc: Exception) -> bool:
        # Class 22 (data exception) and 23 (integrity) come from the server; the
        # others from encoding a value client-side (an int beyond bigint, say).
        return isinstance(exc, _ROW_FAULTS)

    async def ping(self) -> bool:
        try:
            async with self._connection(self._timeout_s) as conn:
                return bool(await conn.fetchval("SELECT 1") == 1)
        except Exception:  # noqa: BLE001 -- any failure to answer means "not reachable" here
            return False


@contextlib.asynccontextmanager
async def _checkout(pool: asyncpg.Pool, deadline: float) -> AsyncIterator[asyncpg.Connection]:
    """A connection from ``pool`` that is cut at ``deadline`` (loop time) if still in use."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout_at(deadline):
        conn = await pool.acquire()
    cut = loop.call_at(deadline, conn.terminate)
    try:
        yield conn
    except BaseException as exc:
        if not _answered(exc):
            conn.terminate()  # timed out, cut or cancelled: no clean-up round trip to a silent server
            if loop.time() >= deadline and not isinstance(exc, asyncio.CancelledError):
                raise TimeoutError("ledger database call ran past its deadline") from exc
        raise
    finally:
        try:
            await pool.release(conn)  # returns at once for a connection that was cut
        finally:
            cut.cancel()


@contextlib.asynccontextmanager
async def _scoped(conn: asyncpg.Connection, tenant: str | None, *, readonly: bool = False) -> AsyncIterator[None]:
    """A transaction that sees and writes ``tenant``'s rows only (None: every tenant's).

    Rolled back with a ROLLBACK only when the server answered with an error;
    otherwise ``_checkout`` cuts the connection next, which rolls it back
    without a round trip to a server that may not answer.
    """
    transaction = conn.transaction(readonly=readonly)
    await transaction.start()
    try:
        await scope(conn, tenant)
        yield
    except BaseException as exc:
        if _answered(exc):
            await transaction.rollback()
        raise
    await transaction.commit()


class PostgresLedger(BatchingLedger):
    """The shared ledger for many replicas; ``spool_path`` must be local and writable."""

    def __init__(
        self,
        dsn: str,
        spool_path: str,
        *,
        options: LedgerOptions | None = None,
        pool_size: int = 4,
        timeout_s: float = 5.0,
        query_timeout_s: float = 30.0,
        auto_migrate: bool = True,
        write_method: WriteMethod = "copy",
    ) -> None:
        store = PostgresStore(
            dsn,
            pool_size=pool_size,
            timeout_s=timeout_s,
            query_timeout_s=query_timeout_s,
            auto_migrate=auto_migrate,
            write_method=write_method,
        )
        super().__init__(store, spool_path, options)
