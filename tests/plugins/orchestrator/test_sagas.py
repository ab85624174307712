"""Sagas and cancels against real Redis and both stores: compensations newest first, failed children local, cancels between steps."""

from __future__ import annotations

import asyncio

import pytest
from sluicegate_orchestrator import Json, Orchestrator, Permanent, StepContext, Worker
from sluicegate_orchestrator.context import Compensation, StepFn

from tests.plugins.orchestrator.conftest import eventually, pending_zero, reaches, running, status_is

SECRET = "SECRET-PROMPT-do-not-log"


@pytest.mark.parametrize("on_child_failure", ["fail", "record_and_continue"])
async def test_a_saga_compensates_in_reverse_and_a_failed_child_stays_local(orchestrator: Orchestrator, on_child_failure: str) -> None:
    journal: list[str] = []

    def effect(name: str) -> tuple[StepFn, Compensation]:
        async def do(key: str) -> Json:
            journal.append(name)
            return {"done": name, "key": key}

        async def undo(result: Json) -> None:
            assert isinstance(result, dict)
            journal.append(f"undo {result['done']}")

        return do, undo

    async def book_trip(ctx: StepContext) -> Json:
        for name in ("reserve", "charge"):
            do, undo = effect(name)
            await ctx.step(name, do, compensate=undo)
        notify = await ctx.spawn("notify", "notify", {"to": SECRET})
        receipt = await ctx.spawn("receipt", "receipt")
        outcomes = await ctx.wait([notify, receipt], fail_on_child_failure=on_child_failure == "fail")
        return {o.id: o.status for o in outcomes}

    async def notify(_ctx: StepContext) -> Json:
        raise Permanent("mailbox full")

    async def receipt(_ctx: StepContext) -> Json:
        return "r-1"

    handlers = {"trip": book_trip, "notify": notify, "receipt": receipt}
    async with running(Worker(orchestrator, handlers, concurrency=4, block_ms=50)):
        parent, _ = await orchestrator.create("acme", "trip", {"dest": "x"})
        expected = "failed" if on_child_failure == "fail" else "succeeded"
        done = await reaches(orchestrator, parent, expected)
        # The worker lived through it: another task still runs.
        after, _ = await orchestrator.create("acme", "receipt")
        await reaches(orchestrator, after, "succeeded")
    children = await orchestrator.store.children("acme", parent.id)
    by_kind = {c.kind: c for c in children}
    assert by_kind["notify"].status == "failed" and by_kind["notify"].error == "Permanent: mailbox full"
    assert by_kind["receipt"].status == "succeeded" and by_kind["receipt"].result == "r-1"
    assert all(c.trace_id == parent.trace_id and c.parent_id == parent.id for c in children)
    assert done.failed_children == [by_kind["notify"].id], "the parent records the failed child"
    if on_child_failure == "fail":
        assert journal == ["reserve", "charge", "undo charge", "undo reserve"]
        assert done.error is not None and done.error.startswith("ChildFailed")
        steps = await orchestrator.store.steps("acme", parent.id)
        assert steps["reserve"].state == steps["charge"].state == "compensated"
    else:
        assert journal == ["reserve", "charge"], "recorded and continued: nothing undone"
        assert done.result == {by_kind["notify"].id: "failed", by_kind["receipt"].id: "succeeded"}
    assert len(children) == 2, "each child was spawned once although the parent ran again to look"


async def test_a_cancel_is_seen_between_steps_and_undoes_what_was_done(orchestrator: Orchestrator) -> None:
    journal: list[str] = []
    reached, release = asyncio.Event(), asyncio.Event()

    async def first(_key: str) -> Json:
        journal.append("first")
        return 1

    async def second(_key: str) -> Json:
        reached.set()
        await release.wait()
        journal.append("second")
        return 2

    async def third(_key: str) -> Json:
        journal.append("third")
        return 3

    async def undo(result: Json) -> None:
        journal.append(f"undo {result}")

    async def job(ctx: StepContext) -> Json:
        await ctx.step("first", first, compensate=undo)
        await ctx.step("second", second, compensate=undo)
        return await ctx.step("third", third)

    async with running(Worker(orchestrator, {"job": job}, block_ms=50)):
        task, _ = await orchestrator.create("acme", "job")
        await asyncio.wait_for(reached.wait(), timeout=10)
        asked = await orchestrator.cancel("acme", task.id)
        assert asked is not None and asked.status == "running" and asked.cancel_requested
        release.set()
        done = await reaches(orchestrator, task, "cancelled")
    assert journal == ["first", "second", "undo 2", "undo 1"], "the third step never ran"
    assert done.error == "cancelled"


async def test_cancelling_a_waiting_parent_compensates_it_and_cancels_its_children(orchestrator: Orchestrator) -> None:
    journal: list[str] = []
    child_busy, release = asyncio.Event(), asyncio.Event()

    async def reserve(_key: str) -> Json:
        journal.append("reserve")
        return "r-1"

    async def unreserve(result: Json) -> None:
        journal.append(f"undo {result}")

    async def parent(ctx: StepContext) -> Json:
        await ctx.step("reserve", reserve, compensate=unreserve)
        child = await ctx.spawn("slow", "slow")
        return [o.status for o in await ctx.wait([child])]

    async def busy(_key: str) -> Json:
        child_busy.set()
        await release.wait()
        return None

    async def after(_key: str) -> Json:
        journal.append("child went on")
        return None

    async def slow(ctx: StepContext) -> Json:
        await ctx.step("busy", busy)
        return await ctx.step("after", after)

    async with running(Worker(orchestrator, {"parent": parent, "slow": slow}, concurrency=2, block_ms=50)):
        task, _ = await orchestrator.create("acme", "parent")
        await asyncio.wait_for(child_busy.wait(), timeout=10)
        await eventually(lambda: status_is(orchestrator, task, "queued"), what="the parent yielding")
        asked = await orchestrator.cancel("acme", task.id)
        assert asked is not None and asked.status == "queued" and asked.cancel_requested
        done = await reaches(orchestrator, task, "cancelled")
        release.set()
        [child] = await orchestrator.store.children("acme", task.id)
        await reaches(orchestrator, child, "cancelled")
    assert journal == ["reserve", "undo r-1"], "the parent's step undone; the child stopped at its next step"
    assert done.error == "cancelled"


async def test_a_queued_task_cancelled_never_runs(orchestrator: Orchestrator) -> None:
    runs = 0

    async def job(_ctx: StepContext) -> Json:
        nonlocal runs
        runs += 1
        return None

    task, _ = await orchestrator.create("acme", "job")
    cancelled = await orchestrator.cancel("acme", task.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    async with running(Worker(orchestrator, {"job": job}, block_ms=50)):
        await eventually(lambda: pending_zero(orchestrator, stream_empty=True), what="the entry acknowledged")
    assert runs == 0
