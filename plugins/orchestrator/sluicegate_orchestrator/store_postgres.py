"""The production task store: PostgreSQL through asyncpg, shared by every replica and worker.

Tables come from ``migrations/`` (namespace ``orchestrator``), applied on the
first call. Every call is one transaction bound by row-level security to the
tenant it names (``core.pg_scope``), so a query that forgot its ``WHERE
tenant`` would still find only that tenant's rows; ``tenant=None`` (replay,
the dead list) runs under ``*``.
"""

from __future__ import annotations

import asyncpg

from sluicegate_orchestrator import store_sql as sql
from sluicegate_orchestrator.model import Json, NewTask, StepRecord, Task, TaskStatus, check_new, valid_task_id
from sluicegate_orchestrator.pg import task_calls


class PostgresTaskStore:
    def __init__(self, dsn: str, *, timeout_s: float = 5.0, pool_size: int = 4, auto_migrate: bool = True) -> None:
        self.dsn = dsn
        self.calls = task_calls(dsn, timeout_s=timeout_s, pool_size=pool_size, auto_migrate=auto_migrate)

    async def close(self) -> None:
        await self.calls.close()

    async def create(self, new: NewTask, *, task_id: str, trace_id: str, now: float) -> tuple[Task, bool]:
        check_new(new)
        values = (
            task_id, new.tenant, new.kind, new.queue, sql.encode(new.input), new.max_attempts, trace_id, now,
            new.idempotency_key, new.parent_id, b"[]",
        )  # fmt: skip

        async def insert(conn: asyncpg.Connection) -> tuple[Task, bool]:
            row = await conn.fetchrow(sql.INSERT, *values)
            if row is not None:
                return sql.task_from_row(row), True
            existing = await conn.fetchrow(sql.BY_KEY, new.tenant, new.idempotency_key)
            if existing is None:  # only an id collision gets here, and ids are 96 random bits
                raise RuntimeError("task id collision")
            return sql.task_from_row(existing), False

        return await self.calls.run(new.tenant, insert)

    async def _one(self, tenant: str | None, statement: str, *args: object) -> Task | None:
        row = await self.calls.run(tenant, lambda conn: conn.fetchrow(statement, *args))
        return None if row is None else sql.task_from_row(row)

    async def _changed(self, tenant: str, statement: str, *args: object) -> bool:
        return await self.calls.run(tenant, lambda conn: conn.fetchval(statement, *args)) is not None

    async def get(self, tenant: str | None, task_id: str) -> Task | None:
        if not valid_task_id(task_id):
            return None
        if tenant is None:
            return await self._one(None, sql.GET_ANY, task_id)
        return await self._one(tenant, sql.GET, tenant, task_id)

    async def page(self, tenant: str | None, *, after: str | None, limit: int, status: TaskStatus | None = None) -> tuple[list[Task], bool]:
        args = sql.page_args(tenant, limit, status, after)
        query = sql.page_query(tenant=tenant is not None, after=after is not None, status=status is not None)
        rows = await self.calls.run(tenant, lambda conn: conn.fetch(query, *args))
        tasks = [sql.task_from_row(row) for row in rows]
        return tasks[:limit], len(tasks) > limit

    async def children(self, tenant: str, parent_id: str) -> list[Task]:
        rows = await self.calls.run(tenant, lambda conn: conn.fetch(sql.CHILDREN, tenant, parent_id))
        return [sql.task_from_row(row) for row in rows]

    async def cancel(self, tenant: str, task_id: str, *, now: float) -> Task | None:
        if not valid_task_id(task_id):
            return None
        changed = await self._one(tenant, sql.CANCEL, tenant, task_id, now)
        return changed if changed is not None else await self.get(tenant, task_id)

    async def claim(self, tenant: str, task_id: str, *, owner: str, now: float, lease_s: float) -> Task | None:
        return await self._one(tenant, sql.CLAIM, tenant, task_id, owner, now + lease_s, now)

    async def renew(self, tenant: str, task_id: str, *, owner: str, until: float) -> bool:
        return await self._changed(tenant, sql.RENEW, tenant, task_id, owner, until)

    async def finish(
        self, tenant: str, task_id: str, *, owner: str, status: TaskStatus, result: Json, error: str | None, now: float
    ) -> bool:
        return await self._changed(tenant, sql.FINISH, tenant, task_id, owner, status, sql.encode(result), error, now)

    async def requeue(
        self, tenant: str, task_id: str, *, owner: str, not_before: float | None, error: str | None, now: float, yielded: bool
    ) -> bool:
        return await self._changed(tenant, sql.REQUEUE, tenant, task_id, owner, not_before, error, now, int(yielded))

    async def revive(self, tenant: str, task_id: str, *, now: float) -> Task | None:
        async def apply(conn: asyncpg.Connection) -> Task | None:
            row = await conn.fetchrow(sql.REVIVE, tenant, task_id, now)
            if row is None:
                row = await conn.fetchrow(sql.GET, tenant, task_id)
                return None if row is None or row["status"] != "queued" else sql.task_from_row(row)
            await conn.execute(sql.RESET_FAILURES, tenant, task_id)
            return sql.task_from_row(row)

        return await self.calls.run(tenant, apply)

    async def record_failed_child(self, tenant: str, parent_id: str, child_id: str, *, now: float) -> None:
        async def apply(conn: asyncpg.Connection) -> None:
            raw = await conn.fetchval(sql.FAILED_CHILDREN + " FOR UPDATE", tenant, parent_id)
            known = sql.decode(raw)
            listed = [str(c) for c in known] if isinstance(known, list) else []
            if raw is not None and child_id not in listed:
                await conn.execute(sql.SET_FAILED_CHILDREN, tenant, parent_id, sql.encode([*listed, child_id]), now)

        await self.calls.run(tenant, apply)

    async def steps(self, tenant: str, task_id: str) -> dict[str, StepRecord]:
        rows = await self.calls.run(tenant, lambda conn: conn.fetch(sql.STEPS, tenant, task_id))
        return {str(row["name"]): sql.step_from_row(row) for row in rows}

    async def save_step(self, tenant: str, task_id: str, name: str, result: Json, *, now: float) -> None:
        await self.calls.run(tenant, lambda conn: conn.execute(sql.SAVE_STEP, tenant, task_id, name, sql.encode(result), now))

    async def step_failed(self, tenant: str, task_id: str, name: str, *, now: float) -> int:
        failures = await self.calls.run(tenant, lambda conn: conn.fetchval(sql.STEP_FAILED, tenant, task_id, name, now))
        return int(failures)

    async def mark_compensated(self, tenant: str, task_id: str, name: str, *, now: float) -> None:
        await self.calls.run(tenant, lambda conn: conn.execute(sql.COMPENSATED, tenant, task_id, name, now))
