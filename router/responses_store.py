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
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from core.config import Config, ConfigError
from router.responses_records import ResponseStore, ResponseStoreUnavailable, StoredResponse

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
_INSERT = "INSERT OR IGNORE INTO responses (tenant, id, created_at, response, input_items, conversation) VALUES (?, ?, ?, ?, ?, ?)"
_SELECT = "SELECT created_at, response, input_items, conversation FROM responses WHERE tenant = ? AND id = ?"
_DELETE = "DELETE FROM responses WHERE tenant = ? AND id = ?"


class SQLiteResponseStore:
    """The embedded store: one connection on one thread of its own, opened at first use (no file until then)."""

    def __init__(self, path: str) -> None:
        self.path = path
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
            self._conn = conn
        return fn(self._conn)

    async def put(self, record: StoredResponse) -> None:
        r = record
        values = (r.tenant, r.id, r.created_at, r.response, r.input_items, r.conversation)
        await self._call(lambda conn: conn.execute(_INSERT, values))

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        row = await self._call(lambda conn: conn.execute(_SELECT, (tenant, response_id)).fetchone())
        if row is None:
            return None
        created_at, response, input_items, conversation = row
        return StoredResponse(
            id=response_id, tenant=tenant, created_at=created_at, response=response, input_items=input_items, conversation=conversation
        )

    async def delete(self, tenant: str, response_id: str) -> bool:
        removed: int = await self._call(lambda conn: conn.execute(_DELETE, (tenant, response_id)).rowcount)
        return removed > 0


def open_response_store(config: Config) -> ResponseStore:
    state = config.state
    if state.ledger == "postgres":
        dsn = state.dsn()
        if not dsn:
            raise ConfigError("key `state.postgres_dsn`: required when `state.ledger` is postgres")
        from router.responses_store_postgres import PostgresResponseStore

        return PostgresResponseStore(dsn, timeout_s=state.ledger_timeout_s)
    if state.ledger == "sqlite":
        return SQLiteResponseStore(f"{state.ledger_path}.responses")
    return SQLiteResponseStore(":memory:")
