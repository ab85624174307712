"""The embedded ledger: SQLite in WAL mode.

Batches are written on the event loop itself, one statement (at most a few
dozen rows, well under a millisecond) at a time, yielding to other work in
between. A writer thread would seem the obvious choice, but it contends for
the GIL with a busy event loop on every statement: measured here, it cost the
loop far more CPU per request than the writing itself. Nothing that can take
long runs on the loop: WAL checkpoints (which fsync) and queries run on one
reader thread with a connection of their own.

Times are stored as integer microseconds since the epoch (UTC) so that range
filters are exact integer comparisons; money and token sums are exact 64-bit
integers.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from itertools import chain
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TypeVar

import msgspec

from budgets.ledger import BatchingLedger, LedgerOptions, LedgerRow
from budgets.ledger_query import UsageQuery, UsageRow, rows_sql, usage_rows, usage_sql

T = TypeVar("T")

_COLUMNS = (
    "request_id", "started_us", "finished_us", "tenant", "key_id", "model", "deployment", "provider",
    "prompt_tokens", "completion_tokens", "cached_tokens", "cost", "latency_ms", "ttft_ms", "status",
    "error", "route_reason", "pii_entities", "trace_id", "stream",
)  # fmt: skip

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    request_id TEXT NOT NULL,
    started_us INTEGER NOT NULL,
    finished_us INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    deployment TEXT NOT NULL,
    provider TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    ttft_ms REAL,
    status INTEGER NOT NULL,
    error TEXT,
    route_reason TEXT,
    pii_entities TEXT NOT NULL,
    trace_id TEXT,
    stream INTEGER NOT NULL,
    PRIMARY KEY (request_id, started_us)
);
CREATE INDEX IF NOT EXISTS ledger_tenant_started ON ledger (tenant, started_us);
"""

_ROW = f"({', '.join('?' for _ in _COLUMNS)})"
# Rows per INSERT: few statements per batch, each short enough not to hold up
# the loop. Kept under SQLite's oldest limit of 999 variables.
_ROWS_PER_STATEMENT = 999 // len(_COLUMNS)
# Rows written between WAL checkpoints (run on the reader thread).
_CHECKPOINT_ROWS = 5_000


def _insert_sql(rows: int) -> str:
    return f"INSERT OR IGNORE INTO ledger ({', '.join(_COLUMNS)}) VALUES {', '.join([_ROW] * rows)}"


_INSERT_FULL = _insert_sql(_ROWS_PER_STATEMENT)
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder(dict[str, int]).decode


def _checkpoint_passive(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):  # busy or locked: the next one catches up
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")


def _to_record(row: LedgerRow) -> tuple[object, ...]:
    # row --> sqlite values, in _COLUMNS order
    return (
        row.request_id, row.started_us, row.finished_us, row.tenant, row.key_id,
        row.model, row.deployment, row.provider, row.prompt_tokens, row.completion_tokens, row.cached_tokens,
        row.cost, row.latency_ms, row.ttft_ms, row.status, row.error, row.route_reason,
        _json_encode(row.pii_entities).decode() if row.pii_entities else "{}", row.trace_id, int(row.stream),
    )  # fmt: skip


def _from_record(rec: sqlite3.Row) -> LedgerRow:
    return LedgerRow(
        request_id=rec["request_id"], tenant=rec["tenant"], key_id=rec["key_id"], model=rec["model"],
        deployment=rec["deployment"], provider=rec["provider"], prompt_tokens=rec["prompt_tokens"],
        completion_tokens=rec["completion_tokens"], cached_tokens=rec["cached_tokens"], cost=rec["cost"],
        latency_ms=rec["latency_ms"], ttft_ms=rec["ttft_ms"], status=rec["status"], error=rec["error"],
        route_reason=rec["route_reason"], pii_entities=_json_decode(rec["pii_entities"]),
        trace_id=rec["trace_id"], stream=bool(rec["stream"]),
        started_us=rec["started_us"], finished_us=rec["finished_us"],
    )  # fmt: skip


class SQLiteStore:
    """A :class:`~budgets.ledger.LedgerStore` on one SQLite file."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor: ThreadPoolExecutor | None = None
        self._reader: sqlite3.Connection | None = None  # used on the executor's thread only
        self._writer: sqlite3.Connection | None = None  # used on the event loop only
        self._checkpoint: asyncio.Future[None] | None = None
        self._unchecked_rows = 0

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` with the reader connection on the reader thread."""
        if self._executor is None or self._reader is None:
            raise RuntimeError("SQLite ledger store is not open")
        conn = self._reader
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, conn)

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-sqlite")
        loop = asyncio.get_running_loop()
        self._reader = await loop.run_in_executor(self._executor, self._connect, True)
        self._writer = self._connect(schema=False)

    def _connect(self, schema: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        conn.execute("PRAGMA busy_timeout=5000")
        if schema:
            conn.executescript(_SCHEMA)
        else:
            # The writer never checkpoints (a checkpoint fsyncs): the reader thread does.
            conn.execute("PRAGMA wal_autocheckpoint=0")
        return conn

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._checkpoint is not None:
            await asyncio.gather(self._checkpoint, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
        if self._reader is not None:
            await self._call(self._final_checkpoint)
        self._executor.shutdown(wait=True)
        self._executor, self._reader, self._writer = None, None, None

    @staticmethod
    def _final_checkpoint(conn: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    async def write(self, rows: Sequence[LedgerRow]) -> None:
        conn = self._writer
        if conn is None:
            raise RuntimeError("SQLite ledger store is not open")
        records = [_to_record(row) for row in rows]
        step = _ROWS_PER_STATEMENT
        conn.execute("BEGIN IMMEDIATE")  # one transaction per batch
        try:
            for i in range(0, len(records), step):
                if i:
                    await asyncio.sleep(0)  # let requests run between statements
                part = records[i : i + step]
                sql = _INSERT_FULL if len(part) == step else _insert_sql(len(part))
                conn.execute(sql, list(chain.from_iterable(part)))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self._unchecked_rows += len(records)
        self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        """Start a WAL checkpoint on the reader thread once enough rows have piled up."""
        if self._unchecked_rows < _CHECKPOINT_ROWS or (self._checkpoint is not None and not self._checkpoint.done()):
            return
        self._unchecked_rows = 0
        self._checkpoint = asyncio.ensure_future(self._call(_checkpoint_passive))

    async def usage(self, query: UsageQuery) -> list[UsageRow]:
        sql, params = usage_sql(query, "sqlite")
        records = await self._call(lambda conn: [tuple(r) for r in conn.execute(sql, params).fetchall()])
        return usage_rows(query, records)

    async def rows(self, tenant: str | None, start: datetime, end: datetime, limit: int) -> list[LedgerRow]:
        tail, params = rows_sql("sqlite", tenant, start, end, limit)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM ledger {tail}"
        records = await self._call(lambda conn: conn.execute(sql, params).fetchall())
        return [_from_record(rec) for rec in records]

    def refuses(self, exc: Exception) -> bool:
        # An int beyond 64 bits, a NULL in a NOT NULL column, a value sqlite3 cannot bind.
        return isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, OverflowError))

    async def ping(self) -> bool:
        try:
            return await self._call(lambda conn: conn.execute("SELECT 1").fetchone() is not None)
        except (sqlite3.Error, RuntimeError):
            return False


class SQLiteLedger(BatchingLedger):
    """The embedded ledger; the spool defaults to a file beside the database."""

    def __init__(
        self,
        path: str = "sluicegate-ledger.sqlite",
        *,
        spool_path: str | None = None,
        options: LedgerOptions | None = None,
    ) -> None:
        super().__init__(SQLiteStore(path), spool_path or f"{path}.spool", options)
