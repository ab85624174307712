"""The orchestrator's console panel against real Redis and both stores: who sees which tasks, replay, cancel, refusals."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
import sluicegate_orchestrator.console as console
from sluicegate_orchestrator import Json, Orchestrator, RetryPolicy, StepContext, Task, TaskStore, Worker
from sluicegate_orchestrator.console import TasksPanel, error_type
from sluicegate_orchestrator.plugin import OrchestratorOptions, OrchestratorPlugin

from core.console_panel import PanelView, PanelViewer
from core.errors import InvalidRequest, NotFound, Overloaded, PermissionDenied
from tests.plugins.orchestrator.conftest import FakeClock, reaches, running

SECRET = "prompt-text-that-must-never-show"
OPERATOR = PanelViewer(tenant=None, write=True, actor="ops/ops-admin")
ACME = PanelViewer(tenant="acme", write=True, actor="acme/acme-admin")
ACME_READER = PanelViewer(tenant="acme", write=False, actor="acme/acme-reader")


class Audit:
    """The slice of ``Services`` the panel uses: the audit log and a logger."""

    def __init__(self) -> None:
        self.log = logging.getLogger("sluicegate.plugin.orchestrator.test")
        self.events: list[tuple[str, str, str | None, str, dict[str, Any]]] = []

    async def record_event(self, actor: str, action: str, tenant: str | None, target: str, event: dict[str, Any]) -> None:
        self.events.append((actor, action, tenant, target, event))


def _panel(orchestrator: Orchestrator | None, audit: Audit | None = None) -> TasksPanel:
    return TasksPanel(lambda: orchestrator, "default", audit or Audit())  # type: ignore[arg-type]


def _ids(view: PanelView, section: str) -> list[str]:
    return [row.id for s in view.sections if s.id == section for row in s.rows]


async def _dead(orchestrator: Orchestrator, tenants: tuple[str, ...]) -> list[Task]:
    """One task per tenant, each dead after its one attempt failed (its error quoting ``SECRET``)."""

    async def job(_ctx: StepContext) -> Json:
        raise RuntimeError(f"upstream said: {SECRET}")

    worker = Worker(orchestrator, {"job": job}, retry=RetryPolicy(base_s=0.01, cap_s=0.01), block_ms=50)
    async with running(worker):
        tasks = [(await orchestrator.create(t, "job", {"prompt": SECRET}, max_attempts=1))[0] for t in tenants]
        return [await reaches(orchestrator, task, "dead") for task in tasks]


async def test_a_tenant_admin_never_sees_another_tenants_rows(orchestrator: Orchestrator) -> None:
    acme_dead, globex_dead = await _dead(orchestrator, ("acme", "globex"))
    acme_queued, _ = await orchestrator.create("acme", "later")
    globex_queued, _ = await orchestrator.create("globex", "later")
    panel = _panel(orchestrator)
    for params in ({}, {"tenant": "globex"}, {"status": "dead"}, {"status": "queued", "tenant": "globex"}):
        view = await panel.view(ACME, params)
        assert set(_ids(view, "tasks")) <= {acme_dead.id, acme_queued.id} and _ids(view, "dead") == [acme_dead.id]
        assert all(row.cells[1] == "acme" for s in view.sections for row in s.rows)
        encoded = msgspec.json.encode(view).decode()
        assert globex_dead.id not in encoded and globex_queued.id not in encoded and "globex" not in encoded
        assert [f.name for f in view.filters] == ["status"], "a tenant admin gets no tenant filter"
    everything = await panel.view(ACME, {})
    assert _ids(everything, "tasks") == [acme_queued.id, acme_dead.id]


async def test_an_operator_sees_every_tenant_and_replays_a_dead_task(orchestrator: Orchestrator) -> None:
    acme_dead, globex_dead = await _dead(orchestrator, ("acme", "globex"))
    audit = Audit()
    panel = _panel(orchestrator, audit)
    view = await panel.view(OPERATOR, {})
    assert set(_ids(view, "dead")) == {acme_dead.id, globex_dead.id}
    assert set(_ids(view, "tasks")) == {acme_dead.id, globex_dead.id}
    dead = next(s for s in view.sections if s.id == "dead")
    assert [a.action for a in dead.actions] == ["replay_all"] and dead.actions[0].confirm
    row = next(r for r in dead.rows if r.id == globex_dead.id)
    assert [(a.action, a.target) for a in row.actions] == [("replay", globex_dead.id)]
    assert row.cells[3] == "dead" and row.cells[-1] == "RuntimeError", "the error's type, never its text"
    assert SECRET not in msgspec.json.encode(view).decode()
    only_globex = await panel.view(OPERATOR, {"tenant": "globex"})
    assert _ids(only_globex, "tasks") == [globex_dead.id] and _ids(only_globex, "dead") == [globex_dead.id]

    message = await panel.act(OPERATOR, "replay", globex_dead.id)
    assert globex_dead.id in message
    replayed = await orchestrator.get("globex", globex_dead.id)
    assert replayed is not None and (replayed.status, replayed.attempts) == ("queued", 0)
    assert [d.entry.task_id for d in await orchestrator.dead()] == [acme_dead.id]
    assert audit.events[-1][:4] == ("ops/ops-admin", "task.replay", "globex", globex_dead.id)
    with pytest.raises(InvalidRequest):
        await panel.act(OPERATOR, "replay", globex_dead.id)  # queued now: nothing to replay

    assert await panel.act(OPERATOR, "replay_all", "") == "Replayed 1 dead task(s)."
    assert await orchestrator.dead() == []


async def test_a_tenant_admin_replays_and_cancels_only_their_own(orchestrator: Orchestrator) -> None:
    acme_dead, globex_dead, acme_dead_too = await _dead(orchestrator, ("acme", "globex", "acme"))
    globex_queued, _ = await orchestrator.create("globex", "later")
    acme_queued, _ = await orchestrator.create("acme", "later")
    panel = _panel(orchestrator)
    for action, target in (("replay", globex_dead.id), ("cancel", globex_queued.id), ("cancel", "task_" + "0" * 24), ("replay", "../x")):
        with pytest.raises(NotFound):
            await panel.act(ACME, action, target)
    assert (await orchestrator.get("globex", globex_queued.id)).status == "queued"  # type: ignore[union-attr]

    assert await panel.act(ACME, "replay_all", "") == "Replayed 2 dead task(s)."
    assert [d.entry.task_id for d in await orchestrator.dead()] == [globex_dead.id], "another tenant's dead task stays dead"
    for task in (acme_dead, acme_dead_too):
        assert (await orchestrator.get("acme", task.id)).status == "queued"  # type: ignore[union-attr]

    assert await panel.act(ACME, "cancel", acme_queued.id) == f"Cancelled task {acme_queued.id}."
    with pytest.raises(InvalidRequest):
        await panel.act(ACME, "cancel", acme_queued.id)  # final now
    view = await panel.view(ACME, {"status": "cancelled"})
    assert _ids(view, "tasks") == [acme_queued.id] and not any(r.actions for s in view.sections for r in s.rows)


async def test_a_read_only_viewer_gets_no_actions_and_may_run_none(orchestrator: Orchestrator) -> None:
    (dead,) = await _dead(orchestrator, ("acme",))
    panel = _panel(orchestrator)
    view = await panel.view(ACME_READER, {})
    assert _ids(view, "dead") == [dead.id]
    assert not any(s.actions for s in view.sections) and not any(r.actions for s in view.sections for r in s.rows)
    with pytest.raises(PermissionDenied):
        await panel.act(ACME_READER, "replay", dead.id)
    assert (await orchestrator.get("acme", dead.id)).status == "dead"  # type: ignore[union-attr]


async def test_bad_input_is_refused_with_a_client_error(orchestrator: Orchestrator) -> None:
    panel = _panel(orchestrator)
    for params in ({"status": "bogus"}, {"after": "not-a-task"}, {"tenant": "x" * 200}):
        with pytest.raises(InvalidRequest):
            await panel.view(OPERATOR, params)
    with pytest.raises(InvalidRequest):
        await panel.act(OPERATOR, "explode", "")
    with pytest.raises(Overloaded):
        await _panel(None).view(OPERATOR, {})


async def test_pages_follow_the_cursor(store: TaskStore, redis: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    orchestrator = Orchestrator(store, redis, prefix=prefix, clock=clock)
    made = []
    for tenant in ("acme", "globex", "acme"):
        made.append((await orchestrator.create(tenant, "later"))[0])
        clock.advance(1)
    panel = _panel(orchestrator)
    monkeypatch.setattr(console, "PAGE", 2)
    first = await panel.view(OPERATOR, {"status": "queued"})
    assert first.more is not None and first.more["status"] == "queued"
    second = await panel.view(OPERATOR, first.more)
    assert _ids(first, "tasks") + _ids(second, "tasks") == [t.id for t in reversed(made)] and second.more is None


def test_error_types_never_carry_the_text() -> None:
    assert error_type("RuntimeError: the prompt was ...") == "RuntimeError"
    assert error_type("Permanent: input does not match X: ...") == "Permanent"
    assert error_type("the workers running this task were lost 2 times") == "other"
    assert error_type("cancelled") == "cancelled" and error_type(None) == ""


def test_the_plugin_offers_the_tasks_panel() -> None:
    plugin = OrchestratorPlugin(OrchestratorOptions(), Audit())  # type: ignore[arg-type]
    (panel,) = plugin.console_panels()
    assert (panel.name, panel.title, panel.operators_only) == ("tasks", "Tasks", False)
