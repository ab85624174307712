"""One behaviour for both task stores: SQLite (embedded) and PostgreSQL (asyncpg, row-level security).

Every test runs on both (the ``store`` fixture). Below the contract, for
PostgreSQL only: the policies bind an ordinary role, whatever a query forgets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from sluicegate_orchestrator import NewTask, PostgresTaskStore, Task, TaskStore
from sluicegate_orchestrator.migrate import apply_migrations
from sluicegate_orchestrator.model import new_task_id, new_trace_id

from core.errors import InvalidRequest
from tests.integration.rls_scratch import Rls, as_role, scratch

T0 = 1_700_000_000.0


async def make(store: TaskStore, tenant: str = "acme", *, key: str | None = None, now: float = T0, **fields: object) -> tuple[Task, bool]:
    values: dict[str, object] = {"kind": "summarise", "input": {"doc": "d-1", "n": [1, 2]}, **fields}
    new = NewTask(tenant=tenant, idempotency_key=key, **values)  # type: ignore[arg-type]
    return await store.create(new, task_id=new_task_id(), trace_id=new_trace_id(), now=now)


async def test_a_task_reads_back_as_created_and_only_for_its_tenant(store: TaskStore) -> None:
    task, created = await make(store)
    assert created
    assert (task.status, task.attempts, task.max_attempts, task.queue) == ("queued", 0, 5, "default")
    assert task.input == {"doc": "d-1", "n": [1, 2]} and task.result is None and task.failed_children == []
    assert len(task.trace_id) == 32 and task.created_at == T0
    assert await store.get("acme", task.id) == task
    assert await store.get(None, task.id) == task  # the operator's view
    assert await store.get("globex", task.id) is None
    assert await store.cancel("globex", task.id, now=T0) is None
    assert await store.claim("globex", task.id, owner="w", now=T0, lease_s=5) is None
    assert await store.page("globex", after=None, limit=10) == ([], False)
    assert (await store.get("acme", task.id)) == task, "another tenant's calls must change nothing"
    for bad in ("task_missing", "../x", "", "task_" + "0" * 24):
        assert await store.get("acme", bad) is None
        assert await store.cancel("acme", bad, now=T0) is None


async def test_the_same_idempotency_key_gives_the_same_task_per_tenant(store: TaskStore) -> None:
    first, created = await make(store, key="order-7")
    again, created_again = await make(store, key="order-7", now=T0 + 5)
    assert created and not created_again
    assert again == first
    other, other_created = await make(store, "globex", key="order-7")
    assert other_created and other.id != first.id, "a key is unique per tenant, not across tenants"
    unkeyed = [await make(store) for _ in range(2)]
    assert unkeyed[0][0].id != unkeyed[1][0].id, "without a key every create is a new task"


async def test_bad_fields_are_refused_naming_the_field(store: TaskStore) -> None:
    for fields, param in (({"kind": "no spaces"}, "kind"), ({"max_attempts": 0}, "max_attempts"), ({"queue": ""}, "queue")):
        with pytest.raises(InvalidRequest) as caught:
            await make(store, **fields)
        assert caught.value.param == param


async def test_pages_are_newest_first_and_follow_the_cursor(store: TaskStore) -> None:
    made = [(await make(store, now=T0 + i))[0] for i in range(5)]
    await make(store, "globex", now=T0 + 9)
    newest_first = [t.id for t in reversed(made)]
    first, more = await store.page("acme", after=None, limit=2)
    assert [t.id for t in first] == newest_first[:2] and more
    second, more = await store.page("acme", after=first[-1].id, limit=2)
    assert [t.id for t in second] == newest_first[2:4] and more
    last, more = await store.page("acme", after=second[-1].id, limit=2)
    assert [t.id for t in last] == newest_first[4:] and not more
    assert await store.page("acme", after="task_" + "f" * 24, limit=2) == ([], False), "an unknown cursor is no page"
    await store.cancel("acme", made[1].id, now=T0 + 20)
    cancelled, _ = await store.page("acme", after=None, limit=10, status="cancelled")
    assert [t.id for t in cancelled] == [made[1].id]


async def test_the_operators_pages_hold_every_tenants_tasks_newest_first(store: TaskStore) -> None:
    made = [(await make(store, ("acme", "globex", "initech")[i % 3], now=T0 + i))[0] for i in range(5)]
    newest_first = [t.id for t in reversed(made)]
    first, more = await store.page(None, after=None, limit=3)
    assert [t.id for t in first] == newest_first[:3] and more
    assert {t.tenant for t in first} == {"acme", "globex", "initech"}
    rest, more = await store.page(None, after=first[-1].id, limit=3)
    assert [t.id for t in rest] == newest_first[3:] and not more, "the cursor may be any tenant's task"
    await store.cancel("globex", made[1].id, now=T0 + 20)
    await store.cancel("acme", made[3].id, now=T0 + 21)
    cancelled, more = await store.page(None, after=None, limit=10, status="cancelled")
    assert [t.id for t in cancelled] == [made[3].id, made[1].id] and not more
    older, _ = await store.page(None, after=made[3].id, limit=10, status="cancelled")
    assert [t.id for t in older] == [made[1].id]
    assert await store.page(None, after="task_" + "f" * 24, limit=2) == ([], False), "an unknown cursor is no page"
    # A tenant's page never starts after another tenant's task: that cursor is unknown to it.
    assert await store.page("acme", after=made[1].id, limit=10) == ([], False)


async def test_claim_admits_one_run_until_the_lease_lapses(store: TaskStore) -> None:
    task, _ = await make(store)
    first = await store.claim("acme", task.id, owner="w1", now=T0, lease_s=10)
    assert first is not None and (first.status, first.attempts, first.lease_owner, first.lease_until) == ("running", 1, "w1", T0 + 10)
    assert await store.claim("acme", task.id, owner="w2", now=T0 + 5, lease_s=10) is None, "the lease is live"
    assert await store.renew("acme", task.id, owner="w1", until=T0 + 20)
    assert not await store.renew("acme", task.id, owner="w2", until=T0 + 99)
    assert await store.claim("acme", task.id, owner="w2", now=T0 + 15, lease_s=10) is None, "renewed to T0+20"
    second = await store.claim("acme", task.id, owner="w2", now=T0 + 21, lease_s=10)
    assert second is not None and (second.attempts, second.lease_owner) == (2, "w2")
    # The first worker, back from a stall, cannot overwrite the new run's outcome.
    assert not await store.finish("acme", task.id, owner="w1", status="succeeded", result=1, error=None, now=T0 + 22)
    assert await store.finish("acme", task.id, owner="w2", status="succeeded", result={"ok": True}, error=None, now=T0 + 23)
    done = await store.get("acme", task.id)
    assert done is not None and (done.status, done.result, done.finished_at, done.lease_owner) == ("succeeded", {"ok": True}, T0 + 23, None)
    assert await store.claim("acme", task.id, owner="w3", now=T0 + 99, lease_s=10) is None, "a final task never runs again"


async def test_requeue_for_a_retry_or_a_yield(store: TaskStore) -> None:
    task, _ = await make(store)
    await store.claim("acme", task.id, owner="w", now=T0, lease_s=10)
    assert not await store.requeue("acme", task.id, owner="other", not_before=T0 + 4, error="E: x", now=T0, yielded=False)
    assert await store.requeue("acme", task.id, owner="w", not_before=T0 + 4, error="E: x", now=T0 + 1, yielded=False)
    retry = await store.get("acme", task.id)
    assert retry is not None and (retry.status, retry.not_before, retry.error, retry.attempts) == ("queued", T0 + 4, "E: x", 1)
    assert await store.claim("acme", task.id, owner="w", now=T0 + 3, lease_s=10) is None, "a retry is not claimed before it is due"
    claimed = await store.claim("acme", task.id, owner="w", now=T0 + 5, lease_s=10)
    assert claimed is not None and claimed.not_before is None and claimed.attempts == 2
    assert await store.requeue("acme", task.id, owner="w", not_before=None, error=None, now=T0 + 6, yielded=True)
    waiting = await store.get("acme", task.id)
    assert waiting is not None and (waiting.status, waiting.attempts, waiting.error) == ("queued", 1, "E: x"), "a yield spends no attempt"


async def test_cancel_stops_a_queued_task_and_asks_a_running_one(store: TaskStore) -> None:
    queued, _ = await make(store)
    cancelled = await store.cancel("acme", queued.id, now=T0 + 1)
    assert cancelled is not None and (cancelled.status, cancelled.finished_at) == ("cancelled", T0 + 1)
    running, _ = await make(store)
    await store.claim("acme", running.id, owner="w", now=T0, lease_s=10)
    asked = await store.cancel("acme", running.id, now=T0 + 2)
    assert asked is not None and (asked.status, asked.cancel_requested) == ("running", True)
    assert await store.finish("acme", running.id, owner="w", status="cancelled", result=None, error="cancelled", now=T0 + 3)
    final = await store.cancel("acme", running.id, now=T0 + 4)
    assert final is not None and (final.status, final.finished_at) == ("cancelled", T0 + 3), "a final task comes back unchanged"


async def test_cancel_keeps_a_task_with_completed_steps_runnable_so_it_can_compensate(store: TaskStore) -> None:
    waiting, _ = await make(store)
    await store.claim("acme", waiting.id, owner="w", now=T0, lease_s=10)
    await store.save_step("acme", waiting.id, "reserve", "r-1", now=T0)
    await store.requeue("acme", waiting.id, owner="w", not_before=T0 + 60, error=None, now=T0, yielded=False)
    asked = await store.cancel("acme", waiting.id, now=T0 + 1)
    assert asked is not None and (asked.status, asked.cancel_requested, asked.not_before, asked.finished_at) == ("queued", True, None, None)
    rerun = await store.claim("acme", waiting.id, owner="w", now=T0 + 2, lease_s=10)
    assert rerun is not None and rerun.cancel_requested, "claimed at once, to compensate"
    dead, _ = await make(store)
    await store.claim("acme", dead.id, owner="w", now=T0, lease_s=10)
    await store.finish("acme", dead.id, owner="w", status="dead", result=None, error="E: x", now=T0)
    gone = await store.cancel("acme", dead.id, now=T0 + 1)
    assert gone is not None and gone.status == "cancelled", "nothing done, nothing to undo"


async def test_revive_puts_a_dead_task_back_with_fresh_attempts(store: TaskStore) -> None:
    task, _ = await make(store)
    await store.claim("acme", task.id, owner="w", now=T0, lease_s=10)
    assert await store.step_failed("acme", task.id, "fetch", now=T0) == 1
    assert await store.step_failed("acme", task.id, "fetch", now=T0) == 2
    assert await store.finish("acme", task.id, owner="w", status="dead", result=None, error="E: down", now=T0 + 1)
    assert await store.revive("globex", task.id, now=T0 + 2) is None
    revived = await store.revive("acme", task.id, now=T0 + 2)
    assert revived is not None and (revived.status, revived.attempts, revived.finished_at) == ("queued", 0, None)
    assert (await store.steps("acme", task.id))["fetch"].failures == 0
    assert await store.revive("acme", task.id, now=T0 + 3) == revived, "a second replay finds it queued"
    succeeded, _ = await make(store)
    assert await store.revive("acme", succeeded.id, now=T0) == succeeded  # queued: as it is
    await store.cancel("acme", succeeded.id, now=T0)
    assert await store.revive("acme", succeeded.id, now=T0) is None, "only a dead task is revived"


async def test_steps_are_memoised_counted_and_compensated(store: TaskStore) -> None:
    task, _ = await make(store)
    assert await store.steps("acme", task.id) == {}
    assert await store.step_failed("acme", task.id, "charge", now=T0) == 1
    await store.save_step("acme", task.id, "charge", {"receipt": "r-1"}, now=T0)
    await store.save_step("acme", task.id, "charge", {"receipt": "r-2"}, now=T0)  # a second save keeps the first result
    await store.save_step("acme", task.id, "ship", None, now=T0)
    steps = await store.steps("acme", task.id)
    assert steps["charge"].state == "done" and steps["charge"].result == {"receipt": "r-1"} and steps["charge"].failures == 1
    assert steps["ship"].state == "done" and steps["ship"].result is None
    await store.mark_compensated("acme", task.id, "charge", now=T0)
    assert (await store.steps("acme", task.id))["charge"].state == "compensated"
    assert await store.steps("globex", task.id) == {}


async def test_children_and_failed_children_are_the_parents(store: TaskStore) -> None:
    parent, _ = await make(store)
    kids = [(await make(store, parent_id=parent.id, now=T0 + i))[0] for i in range(2)]
    assert [t.id for t in await store.children("acme", parent.id)] == [k.id for k in kids]
    assert await store.children("globex", parent.id) == []
    for _ in range(2):
        await store.record_failed_child("acme", parent.id, kids[1].id, now=T0)
    await store.record_failed_child("globex", parent.id, kids[0].id, now=T0)
    got = await store.get("acme", parent.id)
    assert got is not None and got.failed_children == [kids[1].id]


# --- PostgreSQL only: row-level security binds an ordinary role ---------------------

GRANTS = "GRANT SELECT, INSERT, UPDATE ON tasks, task_steps TO {role}; GRANT SELECT ON schema_migrations TO {role}"


async def _prepare(owner_dsn: str, a: str, b: str) -> None:
    conn = await asyncpg.connect(owner_dsn)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def rls() -> AsyncIterator[Rls]:
    async with scratch("sg_rls_orch", GRANTS, _prepare) as env:
        yield env


async def test_postgres_policies_bind_an_ordinary_role(rls: Rls) -> None:
    store = PostgresTaskStore(rls.role_dsn)
    try:
        mine, _ = await make(store, rls.a, key="k")
        theirs, _ = await make(store, rls.b, key="k")
        async with as_role(rls) as conn:
            async with conn.transaction():
                await conn.execute("SELECT set_config('sluicegate.tenant', $1, true)", rls.a)
                seen = {r["id"] for r in await conn.fetch("SELECT id FROM tasks")}  # no WHERE tenant: the policy filters
                assert seen == {mine.id}
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(
                        "INSERT INTO tasks (id, tenant, kind, queue, input, status, attempts, max_attempts, trace_id, created_at,"
                        " updated_at, cancel_requested, failed_children) VALUES ('task_x', $1, 'k', 'q', '\\x00', 'queued', 0, 1,"
                        " 't', 0, 0, false, '[]')",
                        rls.b,
                    )
            async with conn.transaction():
                assert await conn.fetch("SELECT id FROM tasks") == [], "unscoped, a transaction sees nothing"
        assert await store.get(rls.a, theirs.id) is None
        assert await store.get(None, theirs.id) == theirs
    finally:
        await store.close()
