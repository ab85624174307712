"""The worker against real Redis and both stores: at least once, retries, dead letters, sagas.

Each test has its own Redis key prefix (deleted afterwards) and runs on
SQLite and on a throwaway PostgreSQL database. Waits are polls with generous
bounds, never timed assertions.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import msgspec
import pytest
import redis.asyncio as aioredis
from sluicegate_orchestrator import (
    Hooks,
    Json,
    Orchestrator,
    PostgresTaskStore,
    RetryPolicy,
    SqliteTaskStore,
    StepContext,
    TaskStore,
    TaskStoreUnavailable,
    Worker,
)
from sluicegate_orchestrator.cli import main

from tests.fakes.blackhole import BlackHole
from tests.plugins.orchestrator.conftest import REDIS_URL, FakeClock, eventually, pending_zero, reaches, running

SECRET = "SECRET-PROMPT-do-not-log"


class FixedRandom:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def store_url(store: TaskStore) -> str:
    assert isinstance(store, (SqliteTaskStore, PostgresTaskStore))
    return store.path if isinstance(store, SqliteTaskStore) else store.dsn


async def test_a_task_runs_once_and_its_entry_is_acknowledged(orchestrator: Orchestrator, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, str]] = []
    finished: list[tuple[str, str]] = []

    async def summarise(ctx: StepContext) -> Json:
        assert isinstance(ctx.input, dict)
        words = await ctx.step("count", lambda key: _value(len(str(ctx.input).split())))
        seen.append((ctx.key("count"), ctx.trace_id))
        return {"words": words}

    hooks = Hooks(finished=lambda kind, status, _s: finished.append((kind, status)))
    caplog.set_level(logging.INFO, logger="sluicegate.orchestrator")
    async with running(Worker(orchestrator, {"summarise": summarise}, block_ms=50, hooks=hooks)):
        task, created = await orchestrator.create("acme", "summarise", {"prompt": SECRET})
        done = await reaches(orchestrator, task, "succeeded")
    assert created and done.result == {"words": 2} and done.attempts == 1
    assert seen == [(f"{task.id}:count", task.trace_id)]
    assert finished == [("summarise", "succeeded")]
    queue = orchestrator.queue()
    assert await queue.pending_count() == 0 and await orchestrator.redis.xlen(queue.stream) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert any(f"task={task.id}" in line and f"trace={task.trace_id}" in line for line in lines)
    assert not any(SECRET in line for line in lines), "a task's input never reaches a log line"


async def test_a_worker_killed_mid_task_loses_nothing_and_no_step_runs_twice(orchestrator: Orchestrator) -> None:
    calls: Counter[str] = Counter()
    reached, release = asyncio.Event(), asyncio.Event()

    async def charge(key: str) -> Json:
        calls["charge"] += 1
        return {"receipt": key}

    async def slow(_key: str) -> Json:
        calls["slow"] += 1
        reached.set()
        await release.wait()
        return "shipped"

    async def order(ctx: StepContext) -> Json:
        receipt = await ctx.step("charge", charge)
        shipped = await ctx.step("ship", slow)
        return {"receipt": receipt, "shipped": shipped}

    reclaimed: list[int] = []
    first = Worker(orchestrator, {"order": order}, consumer="w1", visibility_timeout_s=0.5, block_ms=50)
    first.start()
    task, _ = await orchestrator.create("acme", "order", {"sku": "s-1"})
    await asyncio.wait_for(reached.wait(), timeout=10)
    await first.stop(grace_s=0)  # killed: the run is abandoned, nothing acknowledged
    queue = orchestrator.queue()
    assert await queue.pending_count() == 1
    mid = await orchestrator.get("acme", task.id)
    assert mid is not None and mid.status == "running" and mid.lease_owner == "w1"

    release.set()
    second = Worker(orchestrator, {"order": order}, consumer="w2", visibility_timeout_s=0.5, block_ms=50,
                    hooks=Hooks(reclaimed=reclaimed.append))  # fmt: skip
    async with running(second):
        done = await reaches(orchestrator, task, "succeeded")
    assert done.result == {"receipt": {"receipt": f"{task.id}:charge"}, "shipped": "shipped"}
    assert calls == Counter({"charge": 1, "slow": 2}), "the finished step is recalled, not run again"
    assert done.attempts == 2 and reclaimed == [1]
    assert await queue.pending_count() == 0


async def test_retries_back_off_exponentially_with_full_jitter(store: TaskStore, redis: aioredis.Redis, prefix: str) -> None:
    clock = FakeClock()
    orchestrator = Orchestrator(store, redis, prefix=prefix, clock=clock)
    calls = 0
    delays: list[float] = []

    async def fetch(_key: str) -> Json:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ConnectionError(f"upstream down ({SECRET})")
        return "page"

    async def crawl(ctx: StepContext) -> Json:
        return await ctx.step("fetch", fetch)

    worker = Worker(orchestrator, {"crawl": crawl}, retry=RetryPolicy(base_s=2.0, cap_s=60.0), rng=FixedRandom(0.5), block_ms=50,
                    hooks=Hooks(retried=lambda _kind, delay: delays.append(delay)))  # fmt: skip
    queue = orchestrator.queue()
    async with running(worker):
        task, _ = await orchestrator.create("acme", "crawl", max_attempts=5)
        await eventually(lambda: _now(len(delays) == 1), what="the first retry")
        assert delays == [1.0]  # 0.5 x min(60, 2 x 2^0)
        assert await queue.due_times() == {task.id: clock.now + 1.0}
        waiting = await orchestrator.get("acme", task.id)
        assert waiting is not None and (waiting.status, waiting.not_before) == ("queued", clock.now + 1.0)
        assert waiting.error is not None and waiting.error.startswith("ConnectionError")
        await asyncio.sleep(0.3)
        assert calls == 1, "not run again before it is due"
        clock.advance(1.0)
        await eventually(lambda: _now(len(delays) == 2), what="the second retry")
        assert delays == [1.0, 2.0]  # 0.5 x 2 x 2^1
        assert await queue.due_times() == {task.id: clock.now + 2.0}
        clock.advance(2.0)
        done = await reaches(orchestrator, task, "succeeded")
    assert calls == 3 and done.result == "page" and done.attempts == 3
    assert (await store.steps("acme", task.id))["fetch"].failures == 2


def test_the_backoff_ceiling_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=5.0)
    assert [policy.ceiling(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert [policy.delay(n, FixedRandom(0.25)) for n in (1, 3, 9)] == [0.25, 1.0, 1.25]
    assert policy.delay(4, FixedRandom(0.0)) == 0.0, "full jitter starts at zero"


async def test_the_last_attempt_dead_letters_and_a_replay_completes_it(
    orchestrator: Orchestrator, store: TaskStore, prefix: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = True
    runs = 0

    async def fetch(_key: str) -> Json:
        nonlocal runs
        runs += 1
        if broken:
            raise ConnectionError(f"refused ({SECRET})")
        return "ok"

    async def crawl(ctx: StepContext) -> Json:
        return await ctx.step("fetch", fetch)

    caplog.set_level(logging.INFO, logger="sluicegate.orchestrator")
    worker = Worker(orchestrator, {"crawl": crawl}, retry=RetryPolicy(base_s=0.01, cap_s=0.01), block_ms=50)
    args = ["--redis", REDIS_URL, "--store", store_url(store), "--prefix", prefix]
    async with running(worker):
        task, _ = await orchestrator.create("acme", "crawl", max_attempts=3)
        dead = await reaches(orchestrator, task, "dead")
        assert runs == 3 and dead.error is not None and dead.error.startswith("ConnectionError")
        listed = await orchestrator.dead()
        assert [(d.entry.task_id, d.task.status if d.task else None) for d in listed] == [(task.id, "dead")]
        assert await orchestrator.queue().pending_count() == 0

        capsys.readouterr()
        assert await asyncio.to_thread(main, ["dead", *args]) == 0
        out = capsys.readouterr().out
        assert out.split("\t")[:4] == [task.id, "acme", "crawl", "dead"] and "ConnectionError" in out and SECRET not in out

        broken = False
        assert await asyncio.to_thread(main, ["replay", task.id, *args]) == 0
        assert capsys.readouterr().out.split() == [task.id]
        done = await reaches(orchestrator, task, "succeeded")
    assert done.result == "ok" and done.attempts == 1 and runs == 4
    assert await orchestrator.dead() == []
    assert await asyncio.to_thread(main, ["replay", task.id, *args]) == 1, "nothing dead to replay any more"
    assert not any(SECRET in r.getMessage() for r in caplog.records)


async def test_replay_all_moves_every_dead_task_back(orchestrator: Orchestrator) -> None:
    healthy = False

    async def job(_ctx: StepContext) -> Json:
        if not healthy:
            raise RuntimeError("not yet")
        return 1

    async with running(Worker(orchestrator, {"job": job}, retry=RetryPolicy(base_s=0.01, cap_s=0.01), block_ms=50)):
        tasks = [(await orchestrator.create("acme" if i else "globex", "job", max_attempts=1))[0] for i in range(3)]
        for task in tasks:
            await reaches(orchestrator, task, "dead")

        async def all_dead_lettered() -> bool:
            # The store says "dead" first, the dead-letter entry follows (a worker dying in between is recovered).
            return sorted(d.entry.task_id for d in await orchestrator.dead()) == sorted(t.id for t in tasks)

        await eventually(all_dead_lettered, what="every dead task in the dead-letter stream")
        healthy = True
        assert sorted(await orchestrator.replay()) == sorted(t.id for t in tasks)
        for task in tasks:
            await reaches(orchestrator, task, "succeeded")
    assert await orchestrator.replay() == []


async def test_the_same_idempotency_key_runs_one_task_once(orchestrator: Orchestrator) -> None:
    runs: Counter[str] = Counter()

    async def job(ctx: StepContext) -> Json:
        runs[ctx.task.id] += 1
        return "done"

    first, created = await orchestrator.create("acme", "job", {"n": 1}, idempotency_key="req-1")
    again, created_again = await orchestrator.create("acme", "job", {"n": 2}, idempotency_key="req-1")
    assert created and not created_again and again.id == first.id and again.input == {"n": 1}
    assert await orchestrator.redis.xlen(orchestrator.queue().stream) == 2, "a never-started task is enqueued again"
    async with running(Worker(orchestrator, {"job": job}, block_ms=50)):
        await reaches(orchestrator, first, "succeeded")
        later, _ = await orchestrator.create("acme", "job", {"n": 3}, idempotency_key="req-1")
        assert later.id == first.id and later.status == "succeeded"
        await eventually(lambda: pending_zero(orchestrator, stream_empty=True), what="the duplicate acknowledged")
    assert runs == Counter({first.id: 1})


async def test_another_tenants_task_is_not_found(orchestrator: Orchestrator) -> None:
    task, _ = await orchestrator.create("acme", "job", {"n": 1}, idempotency_key="k")
    assert await orchestrator.get("globex", task.id) is None
    assert await orchestrator.cancel("globex", task.id) is None
    assert await orchestrator.list_tasks("globex") == ([], False)
    mine, _ = await orchestrator.create("globex", "job", {"n": 1}, idempotency_key="k")
    assert mine.id != task.id
    listed, more = await orchestrator.list_tasks("acme")
    assert [t.id for t in listed] == [task.id] and not more


async def test_a_graceful_stop_lets_running_tasks_finish(orchestrator: Orchestrator) -> None:
    started = asyncio.Event()

    async def job(_ctx: StepContext) -> Json:
        started.set()
        await asyncio.sleep(0.2)
        return "finished"

    worker = Worker(orchestrator, {"job": job}, block_ms=50)
    worker.start()
    task, _ = await orchestrator.create("acme", "job")
    await asyncio.wait_for(started.wait(), timeout=10)
    await worker.stop(grace_s=10)
    done = await orchestrator.get("acme", task.id)
    assert done is not None and done.status == "succeeded" and await orchestrator.queue().pending_count() == 0


async def test_an_unknown_kind_fails_without_retries(orchestrator: Orchestrator) -> None:
    async with running(Worker(orchestrator, {}, block_ms=50)):
        task, _ = await orchestrator.create("acme", "nobody-handles-this")
        done = await reaches(orchestrator, task, "failed")
    assert done.attempts == 1 and done.error is not None and "no handler" in done.error


async def _value(value: Json) -> Json:
    return value


async def _now(value: bool) -> bool:
    return value


async def test_a_task_that_keeps_losing_its_workers_goes_dead_by_delivery_count(orchestrator: Orchestrator) -> None:
    runs = 0
    reached = asyncio.Event()

    async def hangs(_ctx: StepContext) -> Json:
        nonlocal runs
        runs += 1
        reached.set()
        await asyncio.Event().wait()  # until its worker is killed
        return None

    task, _ = await orchestrator.create("acme", "hangs", max_attempts=2)
    for consumer in ("w1", "w2"):
        reached.clear()
        worker = Worker(orchestrator, {"hangs": hangs}, consumer=consumer, visibility_timeout_s=0.4, block_ms=50)
        worker.start()
        await asyncio.wait_for(reached.wait(), timeout=10)
        await worker.stop(grace_s=0)
    async with running(Worker(orchestrator, {"hangs": hangs}, consumer="w3", visibility_timeout_s=0.4, block_ms=50)):
        dead = await reaches(orchestrator, task, "dead")
    assert runs == 2, "the third delivery is not run"
    assert dead.error is not None and "lost 2 times" in dead.error
    assert [d.entry.task_id for d in await orchestrator.dead()] == [task.id]


class Order(msgspec.Struct):
    sku: str
    quantity: int


async def test_a_handlers_broad_except_does_not_swallow_waiting_or_typed_input_errors(orchestrator: Orchestrator) -> None:
    async def parent(ctx: StepContext) -> Json:
        order = ctx.input_as(Order)
        child = await ctx.spawn("pack", "pack", {"sku": order.sku})
        try:
            outcomes = await ctx.wait([child])
        except Exception:  # noqa: BLE001 - a careless handler: waiting must still yield through it
            return "swallowed"
        return [o.result for o in outcomes]

    async def pack(_ctx: StepContext) -> Json:
        await asyncio.sleep(0.1)  # still running when the parent first looks
        return "packed"

    async with running(Worker(orchestrator, {"parent": parent, "pack": pack}, concurrency=2, block_ms=50)):
        task, _ = await orchestrator.create("acme", "parent", {"sku": "s-1", "quantity": 2})
        done = await reaches(orchestrator, task, "succeeded")
        bad, _ = await orchestrator.create("acme", "parent", {"sku": "s-1"})
        refused = await reaches(orchestrator, bad, "failed")
    assert done.result == ["packed"]
    assert refused.error is not None and refused.error.startswith("Permanent: input does not match Order") and refused.attempts == 1


async def test_a_result_json_cannot_hold_fails_the_task_without_retries(orchestrator: Orchestrator) -> None:
    async def odd(_ctx: StepContext) -> Json:
        return {"handle": object()}  # type: ignore[dict-item]

    async with running(Worker(orchestrator, {"odd": odd}, block_ms=50)):
        task, _ = await orchestrator.create("acme", "odd")
        done = await reaches(orchestrator, task, "failed")
    assert done.attempts == 1 and done.error is not None and "is not JSON" in done.error


async def test_a_silent_database_fails_calls_within_the_deadline_and_the_task_runs_once_it_answers(
    pg_database: str | None, redis: aioredis.Redis, prefix: str
) -> None:
    if pg_database is None:
        pytest.skip("PostgreSQL is not reachable")
    host, _, port = pg_database.split("@", 1)[1].split("/", 1)[0].partition(":")
    hole = BlackHole(host, int(port or 5432))
    hole.start()
    store = PostgresTaskStore(f"postgresql://postgres@{hole.dsn_host}/{pg_database.rsplit('/', 1)[1]}", timeout_s=0.5)
    orchestrator = Orchestrator(store, redis, prefix=prefix)
    runs = 0

    async def job(_ctx: StepContext) -> Json:
        nonlocal runs
        runs += 1
        return "ran"

    try:
        task, _ = await orchestrator.create("acme", "job")  # committed through the proxy
        hole.swallow()
        with pytest.raises(TaskStoreUnavailable):
            await asyncio.wait_for(orchestrator.get("acme", task.id), timeout=5)  # the deadline, not the bound, ends it
        async with running(Worker(orchestrator, {"job": job}, visibility_timeout_s=0.5, block_ms=50)):
            await eventually(lambda: _pending_is(orchestrator, 1), what="the entry read and left pending")
            await asyncio.sleep(0.6)
            assert runs == 0
            hole.forward()
            done = await reaches(orchestrator, task, "succeeded")
        assert runs == 1 and done.result == "ran"
    finally:
        await store.close()
        hole.close()


async def _pending_is(orchestrator: Orchestrator, count: int) -> bool:
    return await orchestrator.queue().pending_count() == count


async def test_a_retried_parent_recalls_its_childrens_outcomes(orchestrator: Orchestrator) -> None:
    child_runs = 0
    flaky_calls = 0

    async def child(_ctx: StepContext) -> Json:
        nonlocal child_runs
        child_runs += 1
        return {"n": child_runs}

    async def flaky(_key: str) -> Json:
        nonlocal flaky_calls
        flaky_calls += 1
        if flaky_calls == 1:
            raise TimeoutError("slow upstream")
        return "ok"

    async def parent(ctx: StepContext) -> Json:
        kid = await ctx.spawn("kid", "child")
        [outcome] = await ctx.wait([kid])
        await ctx.step("flaky", flaky)
        return outcome.result

    handlers = {"parent": parent, "child": child}
    async with running(Worker(orchestrator, handlers, concurrency=2, block_ms=50, retry=RetryPolicy(base_s=0.01, cap_s=0.01))):
        task, _ = await orchestrator.create("acme", "parent")
        done = await reaches(orchestrator, task, "succeeded")
    assert done.result == {"n": 1} and child_runs == 1 and flaky_calls == 2
