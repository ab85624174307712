"""The statements both stores run, written once in PostgreSQL's ``$n`` form, and row decoding.

SQLite takes the same text with ``?n`` parameters (``sqlite_form``); both
dialects accept every construct used here (``ON CONFLICT``, ``RETURNING``,
row-value comparison, ``true``). The schema itself differs only in types:
``migrations/1001_tasks.sql`` for PostgreSQL, ``store_sqlite.SCHEMA``.
"""

from __future__ import annotations

import re
from typing import Literal, Protocol, cast

import msgspec

from sluicegate_orchestrator.model import Json, StepRecord, Task, TaskStatus

COLUMNS = (
    "id, tenant, kind, queue, input, status, attempts, max_attempts, trace_id, created_at, updated_at,"
    " idempotency_key, parent_id, result, error, cancel_requested, not_before, lease_owner, lease_until,"
    " failed_children, finished_at"
)

INSERT = (
    "INSERT INTO tasks (id, tenant, kind, queue, input, status, attempts, max_attempts, trace_id, created_at, updated_at,"
    " idempotency_key, parent_id, cancel_requested, failed_children)"
    " VALUES ($1, $2, $3, $4, $5, 'queued', 0, $6, $7, $8, $8, $9, $10, false, $11)"
    f" ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
)
BY_KEY = f"SELECT {COLUMNS} FROM tasks WHERE tenant = $1 AND idempotency_key = $2"
GET = f"SELECT {COLUMNS} FROM tasks WHERE tenant = $1 AND id = $2"
GET_ANY = f"SELECT {COLUMNS} FROM tasks WHERE id = $1"
CHILDREN = f"SELECT {COLUMNS} FROM tasks WHERE tenant = $1 AND parent_id = $2 ORDER BY created_at, id"
# A task with completed steps is not just marked cancelled: it must run once more so that its
# compensations run (a run replays its memoised steps, registering them, and stops at the next).
_DONE_STEPS = "EXISTS (SELECT 1 FROM task_steps s WHERE s.tenant = tasks.tenant AND s.task_id = tasks.id AND s.state = 'done')"
CANCEL = (
    "UPDATE tasks SET"
    f" status = CASE WHEN status = 'running' THEN 'running' WHEN {_DONE_STEPS} THEN 'queued' ELSE 'cancelled' END,"
    f" finished_at = CASE WHEN status = 'running' OR {_DONE_STEPS} THEN finished_at ELSE $3 END,"
    " cancel_requested = true, not_before = NULL, updated_at = $3"
    f" WHERE tenant = $1 AND id = $2 AND status IN ('queued', 'running', 'dead') RETURNING {COLUMNS}"
)
CLAIM = (
    "UPDATE tasks SET status = 'running', attempts = attempts + 1, lease_owner = $3, lease_until = $4,"
    " not_before = NULL, updated_at = $5"
    " WHERE tenant = $1 AND id = $2"
    " AND ((status = 'queued' AND (not_before IS NULL OR not_before <= $5 OR cancel_requested))"
    " OR (status = 'running' AND lease_until < $5))"
    f" RETURNING {COLUMNS}"
)
_MINE = "WHERE tenant = $1 AND id = $2 AND status = 'running' AND lease_owner = $3 RETURNING id"
RENEW = f"UPDATE tasks SET lease_until = $4 {_MINE}"
FINISH = (
    "UPDATE tasks SET status = $4, result = $5, error = $6, finished_at = $7, updated_at = $7,"
    f" lease_owner = NULL, lease_until = NULL {_MINE}"
)
REQUEUE = (
    "UPDATE tasks SET status = 'queued', not_before = $4, error = COALESCE($5, error), updated_at = $6,"
    f" attempts = attempts - $7, lease_owner = NULL, lease_until = NULL {_MINE}"
)
REVIVE = (
    "UPDATE tasks SET status = 'queued', attempts = 0, not_before = NULL, finished_at = NULL, updated_at = $3"
    f" WHERE tenant = $1 AND id = $2 AND status = 'dead' RETURNING {COLUMNS}"
)
RESET_FAILURES = "UPDATE task_steps SET failures = 0 WHERE tenant = $1 AND task_id = $2 AND state = 'pending'"
FAILED_CHILDREN = "SELECT failed_children FROM tasks WHERE tenant = $1 AND id = $2"
SET_FAILED_CHILDREN = "UPDATE tasks SET failed_children = $3, updated_at = $4 WHERE tenant = $1 AND id = $2"

STEPS = "SELECT name, state, result, failures FROM task_steps WHERE tenant = $1 AND task_id = $2"
SAVE_STEP = (
    "INSERT INTO task_steps (tenant, task_id, name, state, result, failures, updated_at)"
    " VALUES ($1, $2, $3, 'done', $4, 0, $5)"
    " ON CONFLICT (tenant, task_id, name) DO UPDATE SET state = 'done', result = excluded.result, updated_at = excluded.updated_at"
    " WHERE task_steps.state = 'pending'"
)
STEP_FAILED = (
    "INSERT INTO task_steps (tenant, task_id, name, state, result, failures, updated_at)"
    " VALUES ($1, $2, $3, 'pending', NULL, 1, $4)"
    " ON CONFLICT (tenant, task_id, name) DO UPDATE SET failures = task_steps.failures + 1, updated_at = excluded.updated_at"
    " RETURNING failures"
)
COMPENSATED = (
    "UPDATE task_steps SET state = 'compensated', updated_at = $4 WHERE tenant = $1 AND task_id = $2 AND name = $3 AND state = 'done'"
)


class Row(Protocol):
    """A row by column name: ``asyncpg.Record`` and ``sqlite3.Row`` alike."""

    def __getitem__(self, key: str, /) -> object: ...


_STATES: dict[str, Literal["pending", "done", "compensated"]] = {"pending": "pending", "done": "done", "compensated": "compensated"}
_PARAM = re.compile(r"\$(\d+)")


def sqlite_form(statement: str) -> str:
    return _PARAM.sub(r"?\1", statement)


def page_query(*, tenant: bool, after: bool, status: bool) -> str:
    """Newest first; ``$1`` limit, then the tenant (left out: every tenant's), the status and the cursor's id as asked."""
    where: list[str] = []
    n = 1
    mine = ""
    if tenant:
        n += 1
        mine = f"tenant = ${n} AND "
        where.append(f"tenant = ${n}")
    if status:
        n += 1
        where.append(f"status = ${n}")
    if after:
        n += 1
        where.append(f"(created_at, id) < (SELECT created_at, id FROM tasks WHERE {mine}id = ${n})")
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT {COLUMNS} FROM tasks{clause} ORDER BY created_at DESC, id DESC LIMIT $1"


def page_args(tenant: str | None, limit: int, status: TaskStatus | None, after: str | None) -> list[object]:
    """The parameters of ``page_query``: one row over ``limit``, to tell whether more follow."""
    return [limit + 1, *(v for v in (tenant, status, after) if v is not None)]


def encode(value: Json) -> bytes:
    return msgspec.json.encode(value)


def decode(raw: bytes | memoryview | None) -> Json:
    if raw is None:
        return None
    return cast(Json, msgspec.json.decode(bytes(raw)))


def _float(value: object) -> float | None:
    return None if value is None else float(cast(float, value))


def task_from_row(row: Row) -> Task:
    children = decode(cast(bytes, row["failed_children"]))
    return Task(
        id=str(row["id"]),
        tenant=str(row["tenant"]),
        kind=str(row["kind"]),
        queue=str(row["queue"]),
        input=decode(cast(bytes, row["input"])),
        status=cast(TaskStatus, row["status"]),
        attempts=int(cast(int, row["attempts"])),
        max_attempts=int(cast(int, row["max_attempts"])),
        trace_id=str(row["trace_id"]),
        created_at=float(cast(float, row["created_at"])),
        updated_at=float(cast(float, row["updated_at"])),
        idempotency_key=cast("str | None", row["idempotency_key"]),
        parent_id=cast("str | None", row["parent_id"]),
        result=decode(cast("bytes | None", row["result"])),
        error=cast("str | None", row["error"]),
        cancel_requested=bool(row["cancel_requested"]),
        not_before=_float(row["not_before"]),
        lease_owner=cast("str | None", row["lease_owner"]),
        lease_until=_float(row["lease_until"]),
        failed_children=[str(c) for c in children] if isinstance(children, list) else [],
        finished_at=_float(row["finished_at"]),
    )


def step_from_row(row: Row) -> StepRecord:
    return StepRecord(
        name=str(row["name"]),
        state=_STATES[str(row["state"])],
        result=decode(cast("bytes | None", row["result"])),
        failures=int(cast(int, row["failures"])),
    )
