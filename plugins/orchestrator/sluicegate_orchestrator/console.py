"""The orchestrator's page in the admin console (``core.console_panel``): tasks, dead letters, replay and cancel.

Operators see every tenant's tasks (``TaskStore.page`` with no tenant) and may
narrow them to one; a tenant admin sees their own tenant's only, and may
replay or cancel only those. A replay is ``Orchestrator.replay``, the call
the ``replay`` command of the CLI makes (limited to the viewer's tenant for a
tenant admin); a cancel is ``Orchestrator.cancel``, as the task API's. A task's
input, result and error text are never shown: of an error, its type only, as
the CLI's ``dead`` prints it. Each action is recorded in the audit log.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from core.console_panel import PanelAction, PanelFilter, PanelRow, PanelSection, PanelView, PanelViewer
from core.errors import InvalidRequest, NotFound, Overloaded, PermissionDenied
from core.plugin import Services
from sluicegate_orchestrator.client import DeadTask, Orchestrator
from sluicegate_orchestrator.model import STATUSES, Task, TaskStatus, valid_task_id

PAGE = 50
COLUMNS = ["Task", "Tenant", "Kind", "Status", "Attempts", "Created (UTC)", "Updated (UTC)", "Error type"]
CANCELLABLE = frozenset({"queued", "running"})


def error_type(error: str | None) -> str:
    """The type of a task's recorded error ("Type: text"), never its text: that may quote the task's input."""
    if not error:
        return ""
    head = error.split(":", 1)[0].strip()
    return head if head.isidentifier() else "other"


def _utc(epoch_s: float | None) -> str:
    return "" if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _cells(task: Task) -> list[str]:
    status = task.status + (" (cancel requested)" if task.cancel_requested and not task.final else "")
    return [
        task.id, task.tenant, task.kind, status, f"{task.attempts} / {task.max_attempts}", _utc(task.created_at),
        _utc(task.updated_at), error_type(task.error),
    ]  # fmt: skip


class TasksPanel:
    """``/ui/plugins/tasks``: one orchestrator plugin's tasks and the dead letters of its queue."""

    name = "tasks"
    title = "Tasks"
    operators_only = False

    def __init__(self, orchestrator: Callable[[], Orchestrator | None], queue: str, services: Services) -> None:
        self._orchestrator = orchestrator
        self._queue = queue
        self._services = services

    def _running(self) -> Orchestrator:
        found = self._orchestrator()
        if found is None:
            raise Overloaded("The orchestrator is not started; try again shortly.", retry_after=1)
        return found

    async def view(self, viewer: PanelViewer, params: Mapping[str, str]) -> PanelView:
        orchestrator = self._running()
        status = _status(params.get("status", ""))
        after = params.get("after") or None
        if after is not None and not valid_task_id(after):
            raise InvalidRequest("The page cursor is not a task id.", param="after")
        tenant = viewer.tenant if viewer.tenant is not None else (params.get("tenant", "").strip() or None)
        if tenant is not None and len(tenant) > 128:
            raise InvalidRequest("A tenant id is at most 128 characters.", param="tenant")
        tasks, more = await orchestrator.list_tasks(tenant, after=after, limit=PAGE, status=status)
        dead = [d for d in await orchestrator.dead(self._queue) if tenant is None or d.entry.tenant == tenant]
        filters = [PanelFilter(name="status", label="Status", value=status or "", choices=["", *STATUSES])]
        if viewer.operator:
            filters.append(PanelFilter(name="tenant", label="Tenant", value=tenant or ""))
        following = None
        if more and tasks:
            following = {k: v for k, v in (("after", tasks[-1].id), ("status", status or ""), ("tenant", params.get("tenant", ""))) if v}
        return PanelView(
            sections=[self._dead_section(viewer, dead), _tasks_section(viewer, tasks, status)], filters=filters, more=following
        )

    def _dead_section(self, viewer: PanelViewer, dead: list[DeadTask]) -> PanelSection:
        rows = []
        for item in dead:
            task = item.task
            actions = [PanelAction(label="Replay", action="replay", target=item.entry.task_id)] if viewer.write else []
            if task is None:
                cells = [item.entry.task_id, item.entry.tenant, "", "missing", "", "", "", ""]
                rows.append(PanelRow(id=item.entry.task_id, cells=cells))
                continue
            rows.append(PanelRow(id=task.id, cells=_cells(task), actions=actions if task.status == "dead" else []))
        everything = [PanelAction(label="Replay all", action="replay_all", confirm=True)] if viewer.write and rows else []
        return PanelSection(
            id="dead", title=f"Dead letters (queue {self._queue})", columns=COLUMNS, rows=rows, actions=everything,
            empty="No dead tasks.", note="A replay puts a task back on its queue, attempts reset; completed steps do not run again.",
        )  # fmt: skip

    async def act(self, viewer: PanelViewer, action: str, target: str) -> str:
        if not viewer.write:
            raise PermissionDenied("Replaying or cancelling tasks needs the `tenant:write` or `ops:write` scope.")
        orchestrator = self._running()
        if action == "replay_all":
            replayed = await orchestrator.replay(self._queue, None, tenant=viewer.tenant)
            await self._audit(viewer, "task.replay", viewer.tenant, "*", {"queue": self._queue, "tasks": replayed[:100]})
            return f"Replayed {len(replayed)} dead task(s)."
        if action not in ("replay", "cancel"):
            raise InvalidRequest(f"The tasks page has no action {action[:64]!r}.", param="action")
        task = await self._task(orchestrator, viewer, target)
        if action == "replay":
            if task.status != "dead":
                raise InvalidRequest(f"Task {task.id} is {task.status}, not dead: there is nothing to replay.", code="task_not_dead")
            if not await orchestrator.replay(task.queue, task.id, tenant=task.tenant):
                raise InvalidRequest(f"Task {task.id} was not replayed: it is no longer dead.", code="task_not_dead")
            await self._audit(viewer, "task.replay", task.tenant, task.id, {"queue": task.queue, "tasks": [task.id]})
            return f"Replayed task {task.id}."
        if task.status not in CANCELLABLE:
            raise InvalidRequest(f"Task {task.id} is {task.status}: only a queued or running task can be cancelled.", code="task_final")
        cancelled = await orchestrator.cancel(task.tenant, task.id)
        if cancelled is None:
            raise NotFound(f"There is no task {task.id}.", code="task_not_found")
        await self._audit(viewer, "task.cancel", task.tenant, task.id, {"status": cancelled.status})
        if cancelled.status == "cancelled":
            return f"Cancelled task {task.id}."
        return f"Task {task.id} was asked to stop; it ends cancelled once its completed steps are compensated."

    async def _task(self, orchestrator: Orchestrator, viewer: PanelViewer, task_id: str) -> Task:
        """The viewer's task: another tenant's is as absent as one that does not exist."""
        task = await orchestrator.store.get(viewer.tenant, task_id) if valid_task_id(task_id) else None
        if task is None:
            raise NotFound(f"There is no task {task_id[:64]!r}.", code="task_not_found")
        return task

    async def _audit(self, viewer: PanelViewer, action: str, tenant: str | None, target: str, event: dict[str, object]) -> None:
        try:
            await self._services.record_event(viewer.actor or "console", action, tenant, target, {"via": "console", **event})
        except Exception:  # noqa: BLE001 - the action is done; a missing audit entry is logged, not shown as a failed action
            self._services.log.warning("orchestrator console: the audit entry of %s on %s was not recorded", action, target)


def _status(value: str) -> TaskStatus | None:
    if not value:
        return None
    for status in STATUSES:
        if status == value:
            return status
    raise InvalidRequest(f"A task status is one of {', '.join(STATUSES)}.", param="status")


def _tasks_section(viewer: PanelViewer, tasks: list[Task], status: TaskStatus | None) -> PanelSection:
    rows = []
    for task in tasks:
        actions = []
        if viewer.write and task.status == "dead":
            actions.append(PanelAction(label="Replay", action="replay", target=task.id))
        if viewer.write and task.status in CANCELLABLE and not task.cancel_requested:
            actions.append(PanelAction(label="Cancel", action="cancel", target=task.id, confirm=True))
        rows.append(PanelRow(id=task.id, cells=_cells(task), actions=actions))
    title = "Tasks, newest first" + (f" ({status})" if status else "")
    return PanelSection(id="tasks", title=title, columns=COLUMNS, rows=rows, empty="No tasks match.")
