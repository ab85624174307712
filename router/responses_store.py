"""Stored responses: what ``store: true`` keeps, for retrieval and for ``previous_response_id``.

A record keeps the Response object as the client got it, this request's input
items (``input_items``) and the whole conversation up to and including its
output: a continuation prepends that list and needs no walk up the chain, and
deleting a response leaves the conversations continued from it whole. Every
operation names the tenant, and a response of another tenant is as absent as
one that never existed.

The store follows the ledger (``state.ledger``): PostgreSQL when the ledger is
(``router.responses_store_postgres``, shared by every replica), else SQLite in
a file beside the ledger's, or in memory when the ledger is off. The SQLite
file is its own, not the ledger's: its writes never wait on the ledger's lock.

Responses expire ``state.responses_retention_days`` after their creation
(``Retention``): reads and deletes skip expired rows at once, and the sweep
(``router.responses_expiry``) deletes them in batches, oldest first.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from core.config import Config, ConfigError
from router.responses_records import ResponseStore, ResponseStoreUnavailable, Retention, StoredResponse

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    tenant       TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    response     BLOB    NOT NULL,
    input_items  BLOB    NOT NULL,
    conversation BLOB    NOT NULL,
    PRIMARY KEY (tenant, id)
)
"""
_INDEX = "CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at)"
_INSERT = "INSERT OR IGNORE INTO responses (tenant, id, created_at, response, input_items, conversation) VALUES (?, ?, ?, ?, ?, ?)"
# ?3: the expiry cutoff (NULL: responses never expire); an expired row is as absent as a missing one.
_ALIVE = "(?3 IS NULL OR created_at > ?3)"
_SELECT = f"SELECT created_at, response, input_items, conversation FROM responses WHERE tenant = ?1 AND id = ?2 AND {_ALIVE}"
_DELETE = f"DELETE FROM responses WHERE tenant = ?1 AND id = ?2 AND {_ALIVE}"
_SWEEP = "DELETE FROM responses WHERE rowid IN (SELECT rowid FROM responses WHERE created_at <= ? ORDER BY created_at LIMIT ?)"


class SQLiteResponseStore:
    """The embedded store: one connection on one thread of its own, opened at first use (no file until then)."""

    def __init__(self, path: str, retention: Retention | None = None) -> None:
        self.path = path
        self.retention = retention if retention is not None else Retention()
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used on the executor's thread only

    async def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="responses-sqlite")

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        executor.shutdown(wait=True)

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        executor = self._executor
        if executor is None:
            raise ResponseStoreUnavailable("The response store is not started.")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, self._on_thread, fn)
        except sqlite3.Error as exc:
            raise ResponseStoreUnavailable(f"The response store failed ({type(exc).__name__}); try again shortly.", retry_after=1) from None

    def _on_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute(_SCHEMA)
            conn.execute(_INDEX)
            self._conn = conn
        return fn(self._conn)

    async def put(self, record: StoredResponse) -> None:
        r = record
        values = (r.tenant, r.id, r.created_at, r.response, r.input_items, r.conversation)
        await self._call(lambda conn: conn.execute(_INSERT, values))

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        key = (tenant, response_id, self.retention.cutoff())
        row = await self._call(lambda conn: conn.execute(_SELECT, key).fetchone())
        if row is None:
            return None
        created_at, response, input_items, conversation = row
        return StoredResponse(
            id=response_id, tenant=tenant, created_at=created_at, response=response, input_items=input_items, conversation=conversation
        )

    async def delete(self, tenant: str, response_id: str) -> bool:
        key = (tenant, response_id, self.retention.cutoff())
        removed: int = await self._call(lambda conn: conn.execute(_DELETE, key).rowcount)
        return removed > 0

    async def sweep(self, limit: int) -> int:
        cutoff = self.retention.cutoff()
        if cutoff is None:
            return 0
        removed: int = await self._call(lambda conn: conn.execute(_SWEEP, (cutoff, limit)).rowcount)
        return removed


def open_response_store(config: Config, clock: Callable[[], float] = time.time) -> ResponseStore:
    state = config.state
    retention = Retention(state.responses_retention_days, clock)
    if state.ledger == "postgres":
        dsn = state.dsn()
        if not dsn:
            raise ConfigError("key `state.postgres_dsn`: required when `state.ledger` is postgres")
        from router.responses_store_postgres import PostgresResponseStore

        return PostgresResponseStore(dsn, retention, timeout_s=state.ledger_timeout_s)
    if state.ledger == "sqlite":
        return SQLiteResponseStore(f"{state.ledger_path}.responses", retention)
    return SQLiteResponseStore(":memory:", retention)
