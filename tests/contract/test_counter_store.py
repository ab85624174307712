"""One behaviour for every counter store: in-process, Redis with Lua, and a Redis Cluster.

Each harness gives the suite the same handle on time: the memory store runs on
a fake clock that moves only when told; Redis gets real, short waits measured
on the server's own clock (the scripts use Redis TIME). The cluster harness
runs the Redis store against a local three-shard cluster (``tests.redis_cluster``),
where counters are sharded by tenant.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from budgets.store import (
    BUDGET_KEY_GRACE_MS,
    BudgetRule,
    LimitRule,
    StoreUnavailable,
)
from budgets.store_redis import RedisCounterStore
from tests.contract.counter_harness import Harness, money, plan, reserve


async def test_requests_window_is_exact(harness: Harness) -> None:
    rpm = LimitRule("key:rpm", "requests", limit=10, window_ms=1000)
    await harness.window_start(1000)
    for n in range(10):
        assert (await reserve(harness.store, f"r{n}", rpm)).allowed
    refused = await reserve(harness.store, "r10", rpm)
    assert (refused.allowed, refused.reason, refused.key) == (False, "requests", "key:rpm")
    assert refused.retry_after_ms is not None and 0 < refused.retry_after_ms <= 1000
    await harness.advance(refused.retry_after_ms + 20)
    assert (await reserve(harness.store, "r11", rpm)).allowed


async def test_now_ms_chooses_the_window(harness: Harness) -> None:
    rpm = LimitRule("key:rpm", "requests", limit=1, window_ms=60_000)
    start = (await harness.now()) // 60_000 * 60_000 + 10
    assert (await reserve(harness.store, "a", rpm, now_ms=start)).allowed
    refused = await reserve(harness.store, "b", rpm, now_ms=start + 5)
    assert (refused.reason, refused.retry_after_ms) == ("requests", 60_000 - 15)
    assert (await reserve(harness.store, "c", rpm, now_ms=start + 60_000)).allowed


async def test_token_window_corrected_at_settle(harness: Harness) -> None:
    tpm = LimitRule("key:tpm", "tokens", limit=1000, window_ms=60_000)
    store = harness.store
    assert (await reserve(store, "a", tpm, tokens=600)).allowed
    refused = await reserve(store, "b", tpm, tokens=600)
    assert (refused.reason, refused.key) == ("tokens", "key:tpm")
    assert refused.retry_after_ms is not None and 0 < refused.retry_after_ms <= 60_000
    await store.settle("a", tokens=100)
    assert (await reserve(store, "c", tpm, tokens=600)).allowed  # 100 + 600
    assert not (await reserve(store, "d", tpm, tokens=301)).allowed
    assert (await reserve(store, "e", tpm, tokens=300)).allowed


async def test_requests_window_counts_one_per_request_whatever_the_tokens(harness: Harness) -> None:
    rpm = LimitRule("key:rpm", "requests", limit=2)
    assert (await reserve(harness.store, "a", rpm, tokens=10_000)).allowed
    assert (await reserve(harness.store, "b", rpm, tokens=10_000)).allowed
    assert (await reserve(harness.store, "c", rpm, tokens=0)).reason == "requests"


async def test_concurrency_slot_released_at_settle(harness: Harness) -> None:
    slots = LimitRule("key:conc", "concurrency", limit=2)
    store = harness.store
    assert (await reserve(store, "a", slots)).allowed
    assert (await reserve(store, "b", slots)).allowed
    refused = await reserve(store, "c", slots)
    assert (refused.reason, refused.key, refused.retry_after_ms) == ("concurrency", "key:conc", None)
    await store.settle("a")
    assert (await reserve(store, "c", slots)).allowed
    assert not (await reserve(store, "d", slots)).allowed


async def test_concurrency_slot_reclaimed_after_lease(harness: Harness) -> None:
    slots = LimitRule("key:conc", "concurrency", limit=1)
    assert (await reserve(harness.store, "crashed", slots, lease_ms=1000)).allowed
    assert not (await reserve(harness.store, "b", slots)).allowed
    await harness.advance(1100)
    assert (await reserve(harness.store, "c", slots)).allowed


async def test_hard_budget_never_overspent_by_concurrent_reservations(harness: Harness) -> None:
    budget = money("tenant:acme:money:month:2026-11", limit=1_000_005)
    results = await asyncio.gather(*(reserve(harness.store, f"r{n}", budget, money=10_000) for n in range(500)))
    allowed = [d for d in results if d.allowed]
    assert len(allowed) == 100
    assert {d.reason for d in results if not d.allowed} == {"budget"}
    assert await harness.store.budget_state(budget.key) == (0, 1_000_000)
    assert min(d.remaining[0] for d in allowed) == 5


async def test_budget_bound_holds_while_reservations_and_settles_interleave(harness: Harness) -> None:
    budget = money("tenant:acme:money", limit=1000)
    store = harness.store
    done = asyncio.Event()
    samples: list[int] = []

    async def one(n: int) -> bool:
        if not (await reserve(store, f"r{n}", budget, money=10)).allowed:
            return False
        await asyncio.sleep(0)
        await store.settle(f"r{n}", money=7)
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
    budget = money("tenant:acme:money", limit=1000)
    store = harness.store
    admission = await reserve(store, "a", budget, money=100)
    assert (admission.remaining, admission.held) == ((900,), (100,))
    await store.settle("a", money=60)
    assert await store.budget_state(budget.key) == (60, 0)
    assert (await reserve(store, "b", budget, money=100)).remaining == (840,)
    # more than reserved: the work was done, so it is charged
    await store.settle("b", money=150)
    assert await store.budget_state(budget.key) == (210, 0)


async def test_each_budget_is_charged_in_its_own_unit(harness: Harness) -> None:
    tokens = BudgetRule("tenant:acme:tokens", "tokens", limit=1000)
    cash = money("tenant:acme:money", limit=10**15)
    tpm = LimitRule("key:tpm", "tokens", limit=10_000)
    store = harness.store
    admission = await reserve(store, "a", tpm, tokens, cash, tokens=300, money=9_000)
    assert (admission.remaining, admission.held) == ((700, 10**15 - 9_000), (300, 9_000))
    await store.settle("a", tokens=120, money=4_000)
    assert await store.budget_state(tokens.key) == (120, 0)
    assert await store.budget_state(cash.key) == (4_000, 0)
    # the window holds the 120 actual tokens: 9880 more fit, 9881 do not
    assert not (await reserve(store, "b", tpm, tokens=9_881)).allowed
    assert (await reserve(store, "c", tpm, tokens=9_880)).allowed


async def test_soft_budget_allows_and_reports(harness: Harness) -> None:
    soft = money("tenant:acme:soft", limit=100, hard=False)
    first = await reserve(harness.store, "a", soft, money=80)
    assert (first.allowed, first.soft_exceeded, first.remaining) == (True, (), (20,))
    second = await reserve(harness.store, "b", soft, money=80)
    assert (second.allowed, second.soft_exceeded, second.remaining) == (True, (soft.key,), (0,))
    assert await harness.store.budget_state(soft.key) == (0, 160)


async def test_a_refused_request_reserves_nothing(harness: Harness) -> None:
    store = harness.store
    rpm = LimitRule("key:rpm", "requests", limit=1)
    tpm = LimitRule("key:tpm", "tokens", limit=100)
    slots = LimitRule("key:conc", "concurrency", limit=1)
    cash = money("tenant:money", limit=100)
    assert (await reserve(store, "holder", slots)).allowed
    refused = await reserve(store, "a", rpm, tpm, slots, cash, tokens=100, money=40)
    assert refused.reason == "concurrency"
    assert await store.budget_state(cash.key) == (0, 0)
    exhausted = money("tenant:other", limit=10)
    await store.settle("holder")
    assert (await reserve(store, "b", rpm, tpm, slots, cash, exhausted, tokens=100, money=40)).reason == "budget"
    assert await store.budget_state(cash.key) == (0, 0)
    # neither refusal took the request, the tokens or the slot
    assert (await reserve(store, "c", rpm, tpm, slots, cash, tokens=100, money=40)).allowed


async def test_settle_is_idempotent(harness: Harness) -> None:
    cash = money("tenant:money", limit=1000)
    tpm = LimitRule("key:tpm", "tokens", limit=100)
    store = harness.store
    await reserve(store, "a", tpm, cash, tokens=50, money=100)
    await store.settle("a", tokens=10, money=70)
    await store.settle("a", tokens=10, money=70)
    await store.settle("a")
    await store.settle("never-reserved", money=500)
    assert await store.budget_state(cash.key) == (70, 0)
    # the window holds 10 tokens, corrected once: 90 more fit, 91 do not
    assert not (await reserve(store, "b", tpm, tokens=91)).allowed
    assert (await reserve(store, "c", tpm, tokens=90)).allowed


async def test_settling_with_zeros_frees_everything(harness: Harness) -> None:
    tpm = LimitRule("key:tpm", "tokens", limit=100)
    slots = LimitRule("key:conc", "concurrency", limit=1)
    cash = money("tenant:money", limit=100)
    store = harness.store
    assert (await reserve(store, "a", tpm, slots, cash, tokens=100, money=100)).allowed
    assert not (await reserve(store, "b", tpm, slots, cash, tokens=100, money=100)).allowed
    await store.settle("a")
    assert await store.budget_state(cash.key) == (0, 0)
    assert (await reserve(store, "b", tpm, slots, cash, tokens=100, money=100)).allowed


async def test_expired_reservation_reclaimed_and_late_settle_charged(harness: Harness) -> None:
    slots = LimitRule("key:conc", "concurrency", limit=1)
    cash = money("tenant:money", limit=50)
    store = harness.store
    assert (await reserve(store, "crashed", slots, cash, money=30, lease_ms=1000)).allowed
    assert (await reserve(store, "b", cash, money=30)).reason == "budget"
    await harness.advance(1100)
    assert (await reserve(store, "b", slots, cash, money=30)).allowed
    assert await store.budget_state(cash.key) == (0, 30)
    # the late settle charges the work but cannot release b's reservation
    await store.settle("crashed", money=25)
    assert await store.budget_state(cash.key) == (25, 30)
    await store.settle("b", money=30)
    assert await store.budget_state(cash.key) == (55, 0)


async def test_repeated_reservation_reserves_once(harness: Harness) -> None:
    cash = money("tenant:money", limit=100)
    slots = LimitRule("key:conc", "concurrency", limit=1)
    first = await reserve(harness.store, "a", slots, cash, money=60)
    again = await reserve(harness.store, "a", slots, cash, money=60)
    assert first == again
    assert again.allowed and again.remaining == (40,)
    assert await harness.store.budget_state(cash.key) == (0, 60)


async def test_money_stays_exact_beyond_double_precision(harness: Harness) -> None:
    big = money("big", 2**62 + 1)  # 2**62 + 1 and 2**62 are the same double
    store = harness.store
    assert (await reserve(store, "a", big, money=2**62)).remaining == (1,)
    assert (await reserve(store, "b", big, money=1)).allowed
    assert not (await reserve(store, "c", big, money=1)).allowed
    await store.settle("a", money=2**62 - 3)
    assert await store.budget_state("big") == (2**62 - 3, 1)


async def test_budget_counter_expires_after_its_period(harness: Harness) -> None:
    now = await harness.now()
    budget = money("tenant:money:day:x", limit=100, period_end_ms=now - BUDGET_KEY_GRACE_MS + 1000)
    await reserve(harness.store, "a", budget, money=10)
    await harness.store.settle("a", money=10)
    assert await harness.store.budget_state(budget.key) == (10, 0)
    await harness.advance(1200)
    assert await harness.store.budget_state(budget.key) == (0, 0)


async def test_invalid_requests_are_rejected(harness: Harness) -> None:
    with pytest.raises(ValueError):
        LimitRule("k", "bogus", limit=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BudgetRule("k", "bogus", limit=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        money("k", limit=-1)
    with pytest.raises(ValueError):
        plan(money("k", 1), money("k", 2))
    with pytest.raises(ValueError):
        await reserve(harness.store, "r", money("k", 10), money=-1)
    with pytest.raises(ValueError):
        await reserve(harness.store, "r", money("k", 10), money=1, lease_ms=0)
    with pytest.raises(ValueError):
        await reserve(harness.store, "", money("k", 10), money=1)
    with pytest.raises(ValueError):
        await reserve(harness.store, "r", money("k", 10), money=1, floors=(0, 2))
    with pytest.raises(ValueError):
        await harness.store.settle("r", money=-5)


async def test_unreachable_redis_fails_fast_with_a_typed_error() -> None:
    store = RedisCounterStore("redis://127.0.0.1:9/0", socket_timeout_s=0.2, connect_timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await reserve(store, "a", money("k", 10), money=1)
    with pytest.raises(StoreUnavailable):
        await store.settle("a")
    assert not await store.ping()
    assert time.monotonic() - started < 3
    await store.close()


async def test_flexible_budget_takes_what_remains(harness: Harness) -> None:
    store = harness.store
    flex = money("flex", 100)
    first = await reserve(store, "a", flex, money=70, floors=(0, 10))
    assert first.allowed and first.held == (70,)
    second = await reserve(store, "b", flex, money=70, floors=(0, 10))
    assert second.allowed and second.held == (30,)
    refused = await reserve(store, "c", flex, money=70, floors=(0, 1))
    assert (refused.allowed, refused.reason) == (False, "budget")
    assert await store.budget_state("flex") == (0, 100)
    await store.settle("b", money=12)
    assert not (await reserve(store, "d", flex, money=70, floors=(0, 19))).allowed
    third = await reserve(store, "e", flex, money=70, floors=(0, 18))
    assert third.allowed and third.held == (18,)
    assert await store.budget_state("flex") == (12, 88)


async def test_flexible_floors_apply_per_unit(harness: Harness) -> None:
    store = harness.store
    tokens, cash = BudgetRule("flex:tokens", "tokens", 100), money("flex:money", 1000)
    assert (await reserve(store, "a", tokens, cash, tokens=90, money=100)).allowed
    # 10 tokens remain: a token floor of 10 fits, 11 does not; money is not short
    assert not (await reserve(store, "b", tokens, cash, tokens=50, money=100, floors=(11, 100))).allowed
    got = await reserve(store, "c", tokens, cash, tokens=50, money=100, floors=(10, 100))
    assert got.allowed and got.held == (10, 100)


async def test_flexible_budget_refuses_below_its_floor(harness: Harness) -> None:
    store = harness.store
    floor = money("floor", 100)
    assert (await reserve(store, "a", floor, money=95)).allowed
    refused = await reserve(store, "b", floor, money=50, floors=(0, 6))
    assert not refused.allowed
    # Refusals reserve nothing, on any key of the request.
    assert await store.budget_state("floor") == (0, 95)


async def test_flexible_budget_is_exact_beyond_double_precision(harness: Harness) -> None:
    store = harness.store
    big = money("bigflex", 2**62 + 7)
    assert (await reserve(store, "a", big, money=2**62)).allowed
    got = await reserve(store, "b", big, money=2**61, floors=(0, 1))
    assert got.allowed and got.held == (7,)
    assert await store.budget_state("bigflex") == (0, 2**62 + 7)


async def test_a_settle_after_the_budget_counter_expired_leaves_other_counters_right(harness: Harness) -> None:
    now = await harness.now()
    old = money("tenant:money:day:y", limit=100, period_end_ms=now - BUDGET_KEY_GRACE_MS + 1000)
    lasting = BudgetRule("tenant:tokens:lifetime", "tokens", limit=1000)
    assert (await reserve(harness.store, "a", old, lasting, tokens=300, money=40)).allowed
    await harness.advance(1200)  # the period's counter is gone; the reservation's record is not
    assert await harness.store.budget_state(old.key) == (0, 0)
    await harness.store.settle("a", tokens=120, money=25)
    # A charge to a period whose counter has expired is not kept (the ledger has it); the rest settles as usual.
    assert await harness.store.budget_state(old.key) == (0, 0)
    assert await harness.store.budget_state(lasting.key) == (120, 0)
