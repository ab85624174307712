"""The embedded ledger: SQLite in WAL mode.

Batches are written on the event loop itself, one statement (at most a few
dozen rows, well under a millisecond) at a time, yielding to other work in
between. A writer thread would seem the obvious choice, but it contends for
the GIL with a busy event loop on every statement: measured here, it cost the
loop far more CPU per request than the writing itself. Nothing that can take
long runs on the loop: queries run on one reader thread, and WAL
checkpoints (which copy what was written into the database file, and fsync;
a RESTART checkpoint also waits for another process's writer) on another,
each with a connection of its own. The writer waits for a checkpoint under
way before its next batch, so that each one copies the whole WAL and the WAL
starts over (``_checkpoint_wal``).

The checkpoint thread keeps the process's priority. A lower one (the
thread's own nice value) was tried and not kept: the thread still takes the
GIL around each SQLite call, and preempted while it holds it, a thread of
low priority would keep the event loop waiting until the scheduler ran it
again, which on a core shared with busy threads of normal priority (other
workers under full load) could take many milliseconds.

Times are stored as integer microseconds since the epoch (UTC) so that range
filters are exact integer comparisons; money and token sums are exact 64-bit
integers. The table's layout is in ``budgets.ledger_sqlite_schema``.

Each batch also adds its sums to the rollups, in the same transaction: an
ignored duplicate is not summed, only the rows an INSERT added are
(``budgets.ledger_sqlite_rollup``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from itertools import chain
from typing import TypeVar

from budgets import ledger_query
from budgets.ledger import BatchingLedger, LedgerOptions
from budgets.ledger_query import UsageQuery, UsageRow, UsageSource, rows_sql, usage_rows
from budgets.ledger_rollup import HourlySums
from budgets.ledger_row import LedgerRow
from budgets.ledger_sqlite_rollup import upsert_parts
from budgets.ledger_sqlite_schema import COLUMNS, from_record, prepare, to_record
from budgets.ledger_usage import usage_sql

T = TypeVar("T")

_ROW = f"({', '.join('?' for _ in COLUMNS)})"
# Rows per INSERT, converted and inserted between two turns of the event loop:
# each such step holds up the requests in flight for its whole length (about
# 5 us a row), so it is kept to a few tenths of a millisecond, which bounds
# what a ledger write adds to any request's latency.
_ROWS_PER_STATEMENT = 16
# Rows written between WAL checkpoints (run on the checkpoint thread).
_CHECKPOINT_ROWS = 5_000
# How long a checkpoint waits for another connection's write transaction before it copies what it can.
_CHECKPOINT_WAIT_MS = 200
# How long a batch waits for another connection's write transaction (another
# worker's, another replica's) before it fails and goes to the spool. It waits
# on the event loop's clock, never inside SQLite: a busy handler would block
# the loop, and with it the very transaction it waits for when both
# connections live in one process.
_BUSY_WAIT_S = 5.0
_BUSY_FIRST_S = 0.0005
_BUSY_MOST_S = 0.02


def _insert_sql(rows: int) -> str:
    """An INSERT of ``rows`` rows that skips any whose key is already stored (a replayed spool, another writer).

    Every value is a bare parameter, and the statement neither fails on a
    duplicate nor returns anything: measured here (16 rows a statement), an
    expression among the VALUES (``NULLIF(?, '')``) cost 7.4 us a row against
    3.3, a RETURNING clause 3.1 against 2.3, and a plain INSERT (which can fail
    halfway, so SQLite keeps a journal to undo the statement) 6.3. The
    cursor's ``rowcount`` says how many rows were inserted; which ones is
    asked only when some were skipped (``_inserted``).
    """
    values = ", ".join([_ROW] * rows)
    return f"INSERT OR IGNORE INTO ledger ({', '.join(COLUMNS)}) VALUES {values}"


_INSERT_FULL = _insert_sql(_ROWS_PER_STATEMENT)
# The keys of the rows an INSERT has just added: a rowid table gives each new row the largest rowid plus one,
# so one statement's rows, written inside our own write transaction, hold consecutive rowids ending at lastrowid.
_INSERTED = "SELECT request_id, started_us FROM ledger WHERE rowid > ? AND rowid <= ?"


def _inserted(conn: sqlite3.Connection, cursor: sqlite3.Cursor) -> list[tuple[str, int]]:
    """The keys of the rows that ``cursor``'s INSERT added, when it skipped some."""
    added = cursor.rowcount
    if added <= 0:
        return []
    last = cursor.lastrowid
    assert last is not None  # an INSERT that added rows
    keys = conn.execute(_INSERTED, (last - added, last)).fetchall()
    if len(keys) != added:  # rowids not consecutive: never seen, but never miscount the rollups for it
        raise sqlite3.DatabaseError(f"ledger: {added} rows inserted, {len(keys)} found by rowid")
    return keys


def _checkpoint_wal(conn: sqlite3.Connection) -> None:
    """Copy the WAL into the database file, so that the next write starts the WAL over from its beginning.

    RESTART waits (on this thread, up to the connection's busy timeout) for a
    write transaction under way, in another process too, and keeps new ones
    out until it is done; one that cannot get in is a passive checkpoint. The
    store's own writer does not begin while a checkpoint runs (``write``).
    Were writes to go on during every checkpoint, none would ever have copied
    the whole WAL, the WAL would never start over, and its file would grow by
    every row written for as long as the load lasted.
    """
    with contextlib.suppress(sqlite3.Error):  # busy or locked: the next one catches up
        conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()


class SQLiteStore:
    """A :class:`~budgets.ledger_row.LedgerStore` on one SQLite file."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor: ThreadPoolExecutor | None = None
        self._reader: sqlite3.Connection | None = None  # used on the executor's thread only
        self._background: ThreadPoolExecutor | None = None  # checkpoints
        self._checkpointer: sqlite3.Connection | None = None  # used on that thread only
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
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-checkpoint")
        self._checkpointer = await loop.run_in_executor(self._background, self._connect, False)
        # how long a checkpoint waits for another process's write transaction (blocking its own thread only)
        self._checkpointer.execute(f"PRAGMA busy_timeout={_CHECKPOINT_WAIT_MS}")

    def _connect(self, schema: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        if schema:
            conn.execute("PRAGMA busy_timeout=5000")  # on the reader thread, waiting blocks nothing else
            prepare(conn)
        else:
            # The writer never checkpoints (a checkpoint fsyncs): the checkpoint thread does.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute("PRAGMA busy_timeout=0")  # see _begin
        return conn

    @staticmethod
    async def _begin(conn: sqlite3.Connection) -> None:
        """Take the write lock, waiting for another writer's transaction with the loop free."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _BUSY_WAIT_S
        pause = _BUSY_FIRST_S
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY or loop.time() >= deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, _BUSY_MOST_S)

    async def close(self, timeout_s: float | None = None) -> None:
        """Checkpoint and close; a local file needs no deadline, so ``timeout_s`` is not used."""
        if self._executor is None:
            return
        if self._checkpoint is not None:
            await asyncio.gather(self._checkpoint, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
        if self._background is not None:
            if self._checkpointer is not None:
                await asyncio.get_running_loop().run_in_executor(self._background, self._checkpointer.close)
            self._background.shutdown(wait=True)
        if self._reader is not None:
            await self._call(self._final_checkpoint)
        self._executor.shutdown(wait=True)
        self._executor, self._reader, self._writer, self._background, self._checkpointer = None, None, None, None, None

    @staticmethod
    def _final_checkpoint(conn: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    async def write(self, rows: Sequence[LedgerRow]) -> None:
        conn = self._writer
        if conn is None:
            raise RuntimeError("SQLite ledger store is not open")
        batch = list(rows)
        sums = HourlySums()
        step = _ROWS_PER_STATEMENT
        checkpoint = self._checkpoint
        if checkpoint is not None and not checkpoint.done():
            await asyncio.wait((checkpoint,))  # so that it copies the whole WAL: see _checkpoint_wal
        await self._begin(conn)  # one transaction per batch
        try:
            for i in range(0, len(batch), step):
                if i:
                    await asyncio.sleep(0)  # let requests run between statements
                rows_part = batch[i : i + step]
                sql = _INSERT_FULL if len(rows_part) == step else _insert_sql(len(rows_part))
                cursor = conn.execute(sql, list(chain.from_iterable(map(to_record, rows_part))))
                if cursor.rowcount == len(rows_part):
                    for row in rows_part:
                        sums.add(row)
                else:
                    sums.add_inserted(rows_part, _inserted(conn, cursor))
            for sql, keys in upsert_parts(sums, step):
                await asyncio.sleep(0)
                conn.executemany(sql, keys)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self._unchecked_rows += len(batch)
        self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        """Start a WAL checkpoint on the checkpoint thread once enough rows have piled up."""
        if self._unchecked_rows < _CHECKPOINT_ROWS or (self._checkpoint is not None and not self._checkpoint.done()):
            return
        if self._background is None or self._checkpointer is None:
            return
        self._unchecked_rows = 0
        self._checkpoint = asyncio.get_running_loop().run_in_executor(self._background, _checkpoint_wal, self._checkpointer)

    async def usage(self, query: UsageQuery, source: UsageSource = "auto") -> list[UsageRow]:
        sql, params = usage_sql(query, "sqlite") if source == "auto" else ledger_query.usage_sql(query, "sqlite")
        records = await self._call(lambda conn: [tuple(r) for r in conn.execute(sql, params).fetchall()])
        return usage_rows(query, records)

    async def rows(self, tenant: str | None, start: datetime, end: datetime, limit: int) -> list[LedgerRow]:
        tail, params = rows_sql("sqlite", tenant, start, end, limit)
        sql = f"SELECT {', '.join(COLUMNS)} FROM ledger {tail}"
        records = await self._call(lambda conn: conn.execute(sql, params).fetchall())
        return [from_record(rec) for rec in records]

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
