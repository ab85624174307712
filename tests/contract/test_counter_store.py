"""One behaviour for both counter stores: in-process and Redis with Lua.

Each harness gives the suite the same handle on time: the memory store runs on
a fake clock that moves only when told; Redis gets real, short waits measured
on the server's own clock (the scripts use Redis TIME).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
import redis.asyncio as aioredis

from budgets.store import (
    BUDGET_KEY_GRACE_MS,
    AdmitRequest,
    Budget,
    CounterStore,
    Limit,
    Settlement,
    StoreUnavailable,
)
from budgets.store_memory import MemoryCounterStore
from budgets.store_redis import RedisCounterStore

REDIS_URL = os.environ.get("SLUICEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LONG_LEASE = 30_000


class MemoryHarness:
    def __init__(self) -> None:
        self.ms = 1_800_000_000_123
        self.store: CounterStore = MemoryCounterStore(clock=lambda: self.ms)

    async def now(self) -> int:
        return self.ms

    async def advance(self, ms: int) -> None:
        self.ms += ms

    async def window_start(self, window_ms: int) -> int:
        self.ms = (self.ms // window_ms + 1) * window_ms + 1
        return self.ms

    async def close(self) -> None:
        await self.store.close()


class RedisHarness:
    def __init__(self) -> None:
        self.redis_store = RedisCounterStore(REDIS_URL, prefix=f"sgtest-{uuid.uuid4().hex[:12]}:")
        self.store: CounterStore = self.redis_store
        self.client = aioredis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=1)

    async def now(self) -> int:
        seconds, micros = await self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def advance(self, ms: int) -> None:
        await asyncio.sleep(ms / 1000)

    async def window_start(self, window_ms: int) -> int:
        now = await self.now()
        await asyncio.sleep(((now // window_ms + 1) * window_ms - now + 5) / 1000)
        return await self.now()

    async def close(self) -> None:
        pattern = self.redis_store.key_prefix + "*"
        keys = [key async for key in self.client.scan_iter(match=pattern, count=500)]
        if keys:
            await self.client.delete(*keys)
        await self.store.close()
        await self.client.aclose()


Harness = MemoryHarness | RedisHarness


@pytest.fixture(params=["memory", "redis"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    made: Harness = MemoryHarness() if request.param == "memory" else RedisHarness()
    if not await made.store.ping():
        await made.close()
        pytest.skip(f"no Redis at {REDIS_URL}")
    yield made
    await made.close()


def admit(
    request_id: str,
    limits: Sequence[Limit] = (),
    budgets: Sequence[Budget] = (),
    lease_ms: int = LONG_LEASE,
    now_ms: int | None = None,
) -> AdmitRequest:
    return AdmitRequest(request_id, list(limits), list(budgets), lease_ms, now_ms)


async def test_requests_window_is_exact(harness: Harness) -> None:
    rpm = Limit("key:rpm", "requests", limit=10, amount=1, window_ms=1000)
    await harness.window_start(1000)
    for n in range(10):
        assert (await harness.store.admit(admit(f"r{n}", [rpm]))).allowed
    refused = await harness.store.admit(admit("r10", [rpm]))
    assert (refused.allowed, refused.reason, refused.key) == (False, "requests", "key:rpm")
    assert refused.retry_after_ms is not None and 0 < refused.retry_after_ms <= 1000
    await harness.advance(refused.retry_after_ms + 20)
    assert (await harness.store.admit(admit("r11", [rpm]))).allowed


async def test_now_ms_chooses_the_window(harness: Harness) -> None:
    rpm = Limit("key:rpm", "requests", limit=1, amount=1, window_ms=60_000)
    start = (await harness.now()) // 60_000 * 60_000 + 10
    assert (await harness.store.admit(admit("a", [rpm], now_ms=start))).allowed
    refused = await harness.store.admit(admit("b", [rpm], now_ms=start + 5))
    assert (refused.reason, refused.retry_after_ms) == ("requests", 60_000 - 15)
    assert (await harness.store.admit(admit("c", [rpm], now_ms=start + 60_000))).allowed


async def test_token_window_corrected_at_settle(harness: Harness) -> None:
    tpm = Limit("key:tpm", "tokens", limit=1000, amount=600, window_ms=60_000)
    store = harness.store
    assert (await store.admit(admit("a", [tpm]))).allowed
    refused = await store.admit(admit("b", [tpm]))
    assert (refused.reason, refused.key) == ("tokens", "key:tpm")
    assert refused.retry_after_ms is not None and 0 < refused.retry_after_ms <= 60_000
    await store.settle(Settlement("a", actual_tokens={"key:tpm": 100}))
    assert (await store.admit(admit("c", [tpm]))).allowed  # 100 + 600
    assert not (await store.admit(admit("d", [Limit("key:tpm", "tokens", 1000, 301)]))).allowed
    assert (await store.admit(admit("e", [Limit("key:tpm", "tokens", 1000, 300)]))).allowed


async def test_concurrency_slot_released_at_settle(harness: Harness) -> None:
    slots = Limit("key:conc", "concurrency", limit=2, amount=1)
    store = harness.store
    assert (await store.admit(admit("a", [slots]))).allowed
    assert (await store.admit(admit("b", [slots]))).allowed
    refused = await store.admit(admit("c", [slots]))
    assert (refused.reason, refused.key, refused.retry_after_ms) == ("concurrency", "key:conc", None)
    await store.settle(Settlement("a"))
    assert (await store.admit(admit("c", [slots]))).allowed
    assert not (await store.admit(admit("d", [slots]))).allowed


async def test_concurrency_slot_reclaimed_after_lease(harness: Harness) -> None:
    slots = Limit("key:conc", "concurrency", limit=1, amount=1)
    assert (await harness.store.admit(admit("crashed", [slots], lease_ms=1000))).allowed
    assert not (await harness.store.admit(admit("b", [slots]))).allowed
    await harness.advance(1100)
    assert (await harness.store.admit(admit("c", [slots]))).allowed


async def test_hard_budget_never_overspent_by_concurrent_admits(harness: Harness) -> None:
    budget = Budget("tenant:acme:money:month:2026-11", limit=1_000_005, amount=10_000)
    decisions = await asyncio.gather(*(harness.store.admit(admit(f"r{n}", budgets=[budget])) for n in range(500)))
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 100
    assert {d.reason for d in decisions if not d.allowed} == {"budget"}
    assert await harness.store.budget_state(budget.key) == (0, 1_000_000)
    assert min(d.remaining[budget.key] for d in allowed) == 5


async def test_budget_bound_holds_while_admits_and_settles_interleave(harness: Harness) -> None:
    budget = Budget("tenant:acme:money", limit=1000, amount=10)
    store = harness.store
    done = asyncio.Event()
    samples: list[int] = []

    async def one(n: int) -> bool:
        if not (await store.admit(admit(f"r{n}", budgets=[budget]))).allowed:
            return False
        await asyncio.sleep(0)
        await store.settle(Settlement(f"r{n}", actual_budget={budget.key: 7}))
        return True

    async def watch() -> None:
        while not done.is_set():
            samples.append(sum(await store.budget_state(budget.key)))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    results = await asyncio.gather(*(one(n) for n in range(300)))
    done.set()
    await watcher
    admitted = sum(results)
    assert samples and max(samples) <= 1000
    assert await store.budget_state(budget.key) == (7 * admitted, 0)
    assert 100 <= admitted and 7 * admitted <= 1000


async def test_settle_charges_actual_and_releases_the_rest(harness: Harness) -> None:
    budget = Budget("tenant:acme:money", limit=1000, amount=100)
    store = harness.store
    decision = await store.admit(admit("a", budgets=[budget]))
    assert decision.remaining == {budget.key: 900}
    await store.settle(Settlement("a", actual_budget={budget.key: 60}))
    assert await store.budget_state(budget.key) == (60, 0)
    assert (await store.admit(admit("b", budgets=[budget]))).remaining == {budget.key: 840}
    # more than reserved: the work was done, so it is charged
    await store.settle(Settlement("b", actual_budget={budget.key: 150}))
    assert await store.budget_state(budget.key) == (210, 0)


async def test_soft_budget_allows_and_reports(harness: Harness) -> None:
    soft = Budget("tenant:acme:soft", limit=100, amount=80, hard=False)
    first = await harness.store.admit(admit("a", budgets=[soft]))
    assert (first.allowed, first.soft_exceeded, first.remaining) == (True, [], {soft.key: 20})
    second = await harness.store.admit(admit("b", budgets=[soft]))
    assert (second.allowed, second.soft_exceeded, second.remaining) == (True, [soft.key], {soft.key: 0})
    assert await harness.store.budget_state(soft.key) == (0, 160)


async def test_a_refused_request_reserves_nothing(harness: Harness) -> None:
    store = harness.store
    rpm = Limit("key:rpm", "requests", limit=1, amount=1)
    tpm = Limit("key:tpm", "tokens", limit=100, amount=100)
    slots = Limit("key:conc", "concurrency", limit=1, amount=1)
    money = Budget("tenant:money", limit=100, amount=40)
    assert (await store.admit(admit("holder", [slots]))).allowed
    refused = await store.admit(admit("a", [rpm, tpm, slots], [money]))
    assert refused.reason == "concurrency"
    assert await store.budget_state(money.key) == (0, 0)
    exhausted = Budget("tenant:other", limit=10, amount=40)
    await store.release("holder")
    assert (await store.admit(admit("b", [rpm, tpm, slots], [money, exhausted]))).reason == "budget"
    assert await store.budget_state(money.key) == (0, 0)
    # neither refusal took the request, the tokens or the slot
    assert (await store.admit(admit("c", [rpm, tpm, slots], [money]))).allowed


async def test_settle_is_idempotent(harness: Harness) -> None:
    budget = Budget("tenant:money", limit=1000, amount=100)
    tpm = Limit("key:tpm", "tokens", limit=100, amount=50)
    store = harness.store
    await store.admit(admit("a", [tpm], [budget]))
    settlement = Settlement("a", actual_tokens={"key:tpm": 10}, actual_budget={budget.key: 70})
    await store.settle(settlement)
    await store.settle(settlement)
    await store.release("a")
    await store.settle(Settlement("never-admitted", actual_budget={budget.key: 500}))
    assert await store.budget_state(budget.key) == (70, 0)
    # the window holds 10 tokens, corrected once: 90 more fit, 91 do not
    assert not (await store.admit(admit("b", [Limit("key:tpm", "tokens", 100, 91)]))).allowed
    assert (await store.admit(admit("c", [Limit("key:tpm", "tokens", 100, 90)]))).allowed


async def test_release_frees_everything(harness: Harness) -> None:
    tpm = Limit("key:tpm", "tokens", limit=100, amount=100)
    slots = Limit("key:conc", "concurrency", limit=1, amount=1)
    budget = Budget("tenant:money", limit=100, amount=100)
    store = harness.store
    assert (await store.admit(admit("a", [tpm, slots], [budget]))).allowed
    assert not (await store.admit(admit("b", [tpm, slots], [budget]))).allowed
    await store.release("a")
    assert await store.budget_state(budget.key) == (0, 0)
    assert (await store.admit(admit("b", [tpm, slots], [budget]))).allowed


async def test_expired_reservation_reclaimed_and_late_settle_charged(harness: Harness) -> None:
    slots = Limit("key:conc", "concurrency", limit=1, amount=1)
    budget = Budget("tenant:money", limit=50, amount=30)
    store = harness.store
    assert (await store.admit(admit("crashed", [slots], [budget], lease_ms=1000))).allowed
    assert (await store.admit(admit("b", budgets=[budget]))).reason == "budget"
    await harness.advance(1100)
    assert (await store.admit(admit("b", [slots], [budget]))).allowed
    assert await store.budget_state(budget.key) == (0, 30)
    # the late settle charges the work but cannot release b's reservation
    await store.settle(Settlement("crashed", actual_budget={budget.key: 25}))
    assert await store.budget_state(budget.key) == (25, 30)
    await store.settle(Settlement("b", actual_budget={budget.key: 30}))
    assert await store.budget_state(budget.key) == (55, 0)


async def test_repeated_admit_reserves_once(harness: Harness) -> None:
    budget = Budget("tenant:money", limit=100, amount=60)
    slots = Limit("key:conc", "concurrency", limit=1, amount=1)
    first = await harness.store.admit(admit("a", [slots], [budget]))
    again = await harness.store.admit(admit("a", [slots], [budget]))
    assert first == again
    assert again.allowed and again.remaining == {budget.key: 40}
    assert await harness.store.budget_state(budget.key) == (0, 60)


async def test_money_stays_exact_beyond_double_precision(harness: Harness) -> None:
    limit = 2**62 + 1  # 2**62 + 1 and 2**62 are the same double
    store = harness.store
    assert (await store.admit(admit("a", budgets=[Budget("big", limit, 2**62)]))).remaining == {"big": 1}
    assert (await store.admit(admit("b", budgets=[Budget("big", limit, 1)]))).allowed
    assert not (await store.admit(admit("c", budgets=[Budget("big", limit, 1)]))).allowed
    await store.settle(Settlement("a", actual_budget={"big": 2**62 - 3}))
    assert await store.budget_state("big") == (2**62 - 3, 1)


async def test_budget_counter_expires_after_its_period(harness: Harness) -> None:
    now = await harness.now()
    budget = Budget("tenant:money:day:x", limit=100, amount=10, period_end_ms=now - BUDGET_KEY_GRACE_MS + 1000)
    await harness.store.admit(admit("a", budgets=[budget]))
    await harness.store.settle(Settlement("a", actual_budget={budget.key: 10}))
    assert await harness.store.budget_state(budget.key) == (10, 0)
    await harness.advance(1200)
    assert await harness.store.budget_state(budget.key) == (0, 0)


def test_invalid_requests_are_rejected() -> None:
    with pytest.raises(ValueError):
        Limit("k", "bogus", limit=1, amount=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Budget("k", limit=10, amount=-1)
    with pytest.raises(ValueError):
        Settlement("r", actual_budget={"k": -5})
    with pytest.raises(ValueError):
        admit("r", budgets=[Budget("k", 1, 1), Budget("k", 2, 1)])
    with pytest.raises(ValueError):
        admit("r", lease_ms=0)


async def test_unreachable_redis_fails_fast_with_a_typed_error() -> None:
    store = RedisCounterStore("redis://127.0.0.1:9/0", socket_timeout_s=0.2, connect_timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.admit(admit("a", budgets=[Budget("k", 10, 1)]))
    with pytest.raises(StoreUnavailable):
        await store.settle(Settlement("a"))
    assert not await store.ping()
    assert time.monotonic() - started < 3
    await store.close()


async def test_flexible_budget_takes_what_remains(harness: Harness) -> None:
    store = harness.store
    first = await store.admit(admit("a", budgets=[Budget("flex", 100, 70, min_amount=10)]))
    assert first.allowed and first.reserved == {"flex": 70}
    second = await store.admit(admit("b", budgets=[Budget("flex", 100, 70, min_amount=10)]))
    assert second.allowed and second.reserved == {"flex": 30}
    refused = await store.admit(admit("c", budgets=[Budget("flex", 100, 70, min_amount=1)]))
    assert (refused.allowed, refused.reason) == (False, "budget")
    assert await store.budget_state("flex") == (0, 100)
    await store.settle(Settlement("b", actual_budget={"flex": 12}))
    assert not (await store.admit(admit("d", budgets=[Budget("flex", 100, 70, min_amount=19)]))).allowed
    third = await store.admit(admit("e", budgets=[Budget("flex", 100, 70, min_amount=18)]))
    assert third.allowed and third.reserved == {"flex": 18}
    assert await store.budget_state("flex") == (12, 88)


async def test_flexible_budget_refuses_below_its_floor(harness: Harness) -> None:
    store = harness.store
    assert (await store.admit(admit("a", budgets=[Budget("floor", 100, 95)]))).allowed
    refused = await store.admit(admit("b", budgets=[Budget("floor", 100, 50, min_amount=6)]))
    assert not refused.allowed
    # Refusals reserve nothing, on any key of the request.
    assert await store.budget_state("floor") == (0, 95)


async def test_flexible_budget_is_exact_beyond_double_precision(harness: Harness) -> None:
    store = harness.store
    limit = 2**62 + 7
    assert (await store.admit(admit("a", budgets=[Budget("bigflex", limit, 2**62)]))).allowed
    got = await store.admit(admit("b", budgets=[Budget("bigflex", limit, 2**61, min_amount=1)]))
    assert got.allowed and got.reserved == {"bigflex": 7}
    assert await store.budget_state("bigflex") == (0, limit)
