"""The task store: one Protocol, an embedded (SQLite) and a production (PostgreSQL) implementation.

Every call names the tenant whose rows it may touch; another tenant's task is
"not found". ``tenant=None`` is the operator's view (replay, the dead list,
the console's task list), never a tenant's. Status changes a worker makes are
compare-and-set on the lease (``owner``), so a worker that lost its task to a
reclaim cannot overwrite the new run's outcome.
"""

from __future__ import annotations

from typing import Protocol

from sluicegate_orchestrator.model import Json, NewTask, StepRecord, Task, TaskStatus


class TaskStore(Protocol):
    async def create(self, new: NewTask, *, task_id: str, trace_id: str, now: float) -> tuple[Task, bool]:
        """The new task, or the tenant's existing one with the same idempotency key (``created`` False)."""
        ...

    async def get(self, tenant: str | None, task_id: str) -> Task | None: ...

    async def page(self, tenant: str | None, *, after: str | None, limit: int, status: TaskStatus | None = None) -> tuple[list[Task], bool]:
        """Newest first, after the task ``after``; True when more follow. ``tenant=None``: every tenant's tasks."""
        ...

    async def children(self, tenant: str, parent_id: str) -> list[Task]: ...

    async def cancel(self, tenant: str, task_id: str, *, now: float) -> Task | None:
        """Cancel: a queued or dead task without completed steps at once; one with completed steps goes
        (back) to queued, asked to stop, so that a run compensates them; a running one is asked to stop
        at its next step. None for another tenant's task; a final task comes back unchanged."""
        ...

    async def claim(self, tenant: str, task_id: str, *, owner: str, now: float, lease_s: float) -> Task | None:
        """Queued and due, or running on a lapsed lease ──► running under ``owner``, attempts + 1; else None."""
        ...

    async def renew(self, tenant: str, task_id: str, *, owner: str, until: float) -> bool: ...

    async def finish(
        self, tenant: str, task_id: str, *, owner: str, status: TaskStatus, result: Json, error: str | None, now: float
    ) -> bool:
        """Running under ``owner`` ──► a final status; False when the lease was lost."""
        ...

    async def requeue(
        self, tenant: str, task_id: str, *, owner: str, not_before: float | None, error: str | None, now: float, yielded: bool
    ) -> bool:
        """Running under ``owner`` ──► queued (a retry after ``not_before``, or a run that ``yielded`` to wait)."""
        ...

    async def revive(self, tenant: str, task_id: str, *, now: float) -> Task | None:
        """Dead ──► queued with its attempts and step failures reset (a replay); a queued task as it is."""
        ...

    async def record_failed_child(self, tenant: str, parent_id: str, child_id: str, *, now: float) -> None: ...

    async def steps(self, tenant: str, task_id: str) -> dict[str, StepRecord]: ...

    async def save_step(self, tenant: str, task_id: str, name: str, result: Json, *, now: float) -> None: ...

    async def step_failed(self, tenant: str, task_id: str, name: str, *, now: float) -> int:
        """Counts one more failure of a step not yet done; returns its failures so far."""
        ...

    async def mark_compensated(self, tenant: str, task_id: str, name: str, *, now: float) -> None: ...

    async def close(self) -> None: ...
