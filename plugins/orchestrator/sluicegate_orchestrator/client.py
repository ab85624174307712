"""The orchestrator's front door: create, get, list and cancel tasks for a tenant; replay dead ones.

A task is written to the store first and enqueued after the commit, so a
worker never reads an entry whose task is not there. A create that repeats
an idempotency key returns the tenant's existing task; if that task was never
started it is enqueued again (the first create may have died between its
commit and its XADD; a duplicate entry is harmless, a claim admits one run).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
import redis.asyncio as aioredis

from sluicegate_orchestrator.model import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, Json, NewTask, Task, TaskStatus, new_task_id, new_trace_id
from sluicegate_orchestrator.queue import DEFAULT_GROUP, DEFAULT_PREFIX, Entry, TaskQueue
from sluicegate_orchestrator.store import TaskStore

MAX_PAGE = 100


class DeadTask(msgspec.Struct, frozen=True):
    """An entry of a dead-letter stream and its task (None when the task is gone)."""

    entry: Entry
    task: Task | None


class Orchestrator:
    def __init__(
        self, store: TaskStore, redis: aioredis.Redis, *, prefix: str = DEFAULT_PREFIX, group: str = DEFAULT_GROUP,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.store = store
        self.redis = redis
        self.clock = clock
        self._prefix = prefix
        self._group = group
        self._queues: dict[str, TaskQueue] = {}

    def queue(self, name: str = DEFAULT_QUEUE) -> TaskQueue:
        found = self._queues.get(name)
        if found is None:
            found = self._queues[name] = TaskQueue(self.redis, name, prefix=self._prefix, group=self._group)
        return found

    async def create(
        self, tenant: str, kind: str, input: Json = None, *, idempotency_key: str | None = None, queue: str = DEFAULT_QUEUE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS, trace_id: str | None = None, parent_id: str | None = None,
    ) -> tuple[Task, bool]:  # fmt: skip
        """The task and whether this call created it (False: the key was seen before)."""
        new = NewTask(
            tenant=tenant, kind=kind, input=input, queue=queue, idempotency_key=idempotency_key,
            max_attempts=max_attempts, parent_id=parent_id, trace_id=trace_id,
        )  # fmt: skip
        task, created = await self.store.create(new, task_id=new_task_id(), trace_id=trace_id or new_trace_id(), now=self.clock())
        if created or (task.status == "queued" and task.attempts == 0 and task.not_before is None):
            await self.queue(task.queue).enqueue(task.id, task.tenant)
        return task, created

    async def get(self, tenant: str, task_id: str) -> Task | None:
        return await self.store.get(tenant, task_id)

    async def list_tasks(
        self, tenant: str | None, *, after: str | None = None, limit: int = 20, status: TaskStatus | None = None
    ) -> tuple[list[Task], bool]:
        """A page of ``tenant``'s tasks, newest first (None: every tenant's, the operator's view)."""
        return await self.store.page(tenant, after=after, limit=max(1, min(limit, MAX_PAGE)), status=status)

    async def cancel(self, tenant: str, task_id: str) -> Task | None:
        """Cancels a task and its unfinished children; None when the tenant has no such task.

        A final task comes back unchanged. One with completed steps is run once more at once, to
        compensate them, and ends ``cancelled``; a running one stops at its next step.
        """
        task = await self.store.cancel(tenant, task_id, now=self.clock())
        if task is None or task.final:
            return task
        if task.status == "queued":
            await self.queue(task.queue).enqueue(task.id, task.tenant)
        for child in await self.store.children(tenant, task_id):
            if not child.final:
                await self.cancel(tenant, child.id)
        return task

    async def dead(self, queue: str = DEFAULT_QUEUE) -> list[DeadTask]:
        entries = await self.queue(queue).dead_entries()
        return [DeadTask(entry, await self.store.get(entry.tenant, entry.task_id)) for entry in entries]

    async def replay(self, queue: str = DEFAULT_QUEUE, task_id: str | None = None, *, tenant: str | None = None) -> list[str]:
        """Dead tasks (one, or every one on the queue) back to queued, their entries back on the stream.

        ``tenant`` limits it to that tenant's dead tasks (a tenant admin's replay); None: any tenant's.
        """
        q = self.queue(queue)
        replayed: list[str] = []
        found = False
        for entry in await q.dead_entries():
            if (task_id is not None and entry.task_id != task_id) or (tenant is not None and entry.tenant != tenant):
                continue
            found = True
            revived = await self.store.revive(entry.tenant, entry.task_id, now=self.clock())
            if revived is None:
                await q.drop_dead(entry)  # cancelled or gone since: nothing to run
            elif await q.move_back(entry) and entry.task_id not in replayed:
                replayed.append(entry.task_id)
        if task_id is not None and not found:
            # Dead in the store, its dead-letter entry lost (a worker died between the two writes).
            task = await self.store.get(tenant, task_id)
            if task is not None and task.status == "dead" and task.queue == queue:
                revived = await self.store.revive(task.tenant, task.id, now=self.clock())
                if revived is not None:
                    await q.enqueue(task.id, task.tenant)
                    replayed.append(task.id)
        return replayed
