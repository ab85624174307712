"""The embedded task store: one SQLite file, for ``sluicegate serve`` on a laptop.

The same statements as PostgreSQL (``store_sql``), run on one connection in a
worker thread, one transaction per call, so the event loop never waits on the
disk. Tenancy is the ``WHERE tenant`` every statement carries (SQLite has no
row-level security); the contract suite checks it as it checks PostgreSQL's.
WAL mode lets a second process (``sluicegate worker`` beside ``serve``) share
the file; ``busy_timeout`` bounds how long a call waits for the other's lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from typing import TypeVar

from sluicegate_orchestrator import store_sql as sql
from sluicegate_orchestrator.model import Json, NewTask, StepRecord, Task, TaskStatus, TaskStoreUnavailable, check_new, valid_task_id

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id               TEXT    PRIMARY KEY,
    tenant           TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    queue            TEXT    NOT NULL,
    input            BLOB    NOT NULL,
    status           TEXT    NOT NULL,
    attempts         INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    trace_id         TEXT    NOT NULL,
    created_at       REAL    NOT NULL,
    updated_at       REAL    NOT NULL,
    idempotency_key  TEXT,
    parent_id        TEXT,
    result           BLOB,
    error            TEXT,
    cancel_requested INTEGER NOT NULL,
    not_before       REAL,
    lease_owner      TEXT,
    lease_until      REAL,
    failed_children  BLOB    NOT NULL,
    finished_at      REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idempotency ON tasks (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_listing ON tasks (tenant, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS tasks_recent ON tasks (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS tasks_children ON tasks (tenant, parent_id) WHERE parent_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_steps (
    tenant     TEXT    NOT NULL,
    task_id    TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    result     BLOB,
    failures   INTEGER NOT NULL,
    updated_at REAL    NOT NULL,
    PRIMARY KEY (tenant, task_id, name)
);
"""

_Q = {name: sql.sqlite_form(getattr(sql, name)) for name in (
    "INSERT", "BY_KEY", "GET", "GET_ANY", "CHILDREN", "CANCEL", "CLAIM", "RENEW", "FINISH", "REQUEUE", "REVIVE",
    "RESET_FAILURES", "FAILED_CHILDREN", "SET_FAILED_CHILDREN", "STEPS", "SAVE_STEP", "STEP_FAILED", "COMPENSATED",
)}  # fmt: skip


def _first(cursor: sqlite3.Cursor) -> sqlite3.Row | None:
    """The first row, every row read (a RETURNING statement runs to its end before the commit)."""
    rows: list[sqlite3.Row] = cursor.fetchall()
    return rows[0] if rows else None


class SqliteTaskStore:
    def __init__(self, path: str, *, busy_timeout_s: float = 5.0) -> None:
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            self._conn = conn
        return self._conn

    def _transact(self, op: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = op(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    async def _run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await asyncio.to_thread(self._transact, op)
        except sqlite3.OperationalError as exc:
            raise TaskStoreUnavailable(f"The task store is unavailable ({type(exc).__name__}); try again shortly.") from None

    async def close(self) -> None:
        def close() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(close)

    async def _one(self, statement: str, *args: object) -> Task | None:
        row = await self._run(lambda conn: _first(conn.execute(_Q[statement], args)))
        return None if row is None else sql.task_from_row(row)

    async def _changed(self, statement: str, *args: object) -> bool:
        return await self._run(lambda conn: _first(conn.execute(_Q[statement], args))) is not None

    async def create(self, new: NewTask, *, task_id: str, trace_id: str, now: float) -> tuple[Task, bool]:
        check_new(new)
        values = (
            task_id, new.tenant, new.kind, new.queue, sql.encode(new.input), new.max_attempts, trace_id, now,
            new.idempotency_key, new.parent_id, b"[]",
        )  # fmt: skip

        def insert(conn: sqlite3.Connection) -> tuple[Task, bool]:
            row = _first(conn.execute(_Q["INSERT"], values))
            if row is not None:
                return sql.task_from_row(row), True
            existing = _first(conn.execute(_Q["BY_KEY"], (new.tenant, new.idempotency_key)))
            if existing is None:
                raise RuntimeError("task id collision")
            return sql.task_from_row(existing), False

        return await self._run(insert)

    async def get(self, tenant: str | None, task_id: str) -> Task | None:
        if not valid_task_id(task_id):
            return None
        return await (self._one("GET_ANY", task_id) if tenant is None else self._one("GET", tenant, task_id))

    async def page(self, tenant: str | None, *, after: str | None, limit: int, status: TaskStatus | None = None) -> tuple[list[Task], bool]:
        args = sql.page_args(tenant, limit, status, after)
        query = sql.sqlite_form(sql.page_query(tenant=tenant is not None, after=after is not None, status=status is not None))
        rows = await self._run(lambda conn: conn.execute(query, args).fetchall())
        tasks = [sql.task_from_row(row) for row in rows]
        return tasks[:limit], len(tasks) > limit

    async def children(self, tenant: str, parent_id: str) -> list[Task]:
        rows = await self._run(lambda conn: conn.execute(_Q["CHILDREN"], (tenant, parent_id)).fetchall())
        return [sql.task_from_row(row) for row in rows]

    async def cancel(self, tenant: str, task_id: str, *, now: float) -> Task | None:
        if not valid_task_id(task_id):
            return None
        changed = await self._one("CANCEL", tenant, task_id, now)
        return changed if changed is not None else await self.get(tenant, task_id)

    async def claim(self, tenant: str, task_id: str, *, owner: str, now: float, lease_s: float) -> Task | None:
        return await self._one("CLAIM", tenant, task_id, owner, now + lease_s, now)

    async def renew(self, tenant: str, task_id: str, *, owner: str, until: float) -> bool:
        return await self._changed("RENEW", tenant, task_id, owner, until)

    async def finish(
        self, tenant: str, task_id: str, *, owner: str, status: TaskStatus, result: Json, error: str | None, now: float
    ) -> bool:
        return await self._changed("FINISH", tenant, task_id, owner, status, sql.encode(result), error, now)

    async def requeue(
        self, tenant: str, task_id: str, *, owner: str, not_before: float | None, error: str | None, now: float, yielded: bool
    ) -> bool:
        return await self._changed("REQUEUE", tenant, task_id, owner, not_before, error, now, int(yielded))

    async def revive(self, tenant: str, task_id: str, *, now: float) -> Task | None:
        def apply(conn: sqlite3.Connection) -> Task | None:
            row = _first(conn.execute(_Q["REVIVE"], (tenant, task_id, now)))
            if row is None:
                row = _first(conn.execute(_Q["GET"], (tenant, task_id)))
                return None if row is None or row["status"] != "queued" else sql.task_from_row(row)
            conn.execute(_Q["RESET_FAILURES"], (tenant, task_id))
            return sql.task_from_row(row)

        return await self._run(apply)

    async def record_failed_child(self, tenant: str, parent_id: str, child_id: str, *, now: float) -> None:
        def apply(conn: sqlite3.Connection) -> None:
            row = _first(conn.execute(_Q["FAILED_CHILDREN"], (tenant, parent_id)))
            if row is None:
                return
            known = sql.decode(row["failed_children"])
            listed = [str(c) for c in known] if isinstance(known, list) else []
            if child_id not in listed:
                conn.execute(_Q["SET_FAILED_CHILDREN"], (tenant, parent_id, sql.encode([*listed, child_id]), now))

        await self._run(apply)

    async def steps(self, tenant: str, task_id: str) -> dict[str, StepRecord]:
        rows = await self._run(lambda conn: conn.execute(_Q["STEPS"], (tenant, task_id)).fetchall())
        return {str(row["name"]): sql.step_from_row(row) for row in rows}

    async def save_step(self, tenant: str, task_id: str, name: str, result: Json, *, now: float) -> None:
        await self._run(lambda conn: conn.execute(_Q["SAVE_STEP"], (tenant, task_id, name, sql.encode(result), now)))

    async def step_failed(self, tenant: str, task_id: str, name: str, *, now: float) -> int:
        row = await self._run(lambda conn: _first(conn.execute(_Q["STEP_FAILED"], (tenant, task_id, name, now))))
        assert row is not None  # an upsert with RETURNING always returns its row
        return int(row[0])

    async def mark_compensated(self, tenant: str, task_id: str, name: str, *, now: float) -> None:
        await self._run(lambda conn: conn.execute(_Q["COMPENSATED"], (tenant, task_id, name, now)))
