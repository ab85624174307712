"""A fair queue tells its observer how long each admitted request waited and which it shed, and why."""

from __future__ import annotations

import asyncio

import pytest

from core.errors import Overloaded
from policies.fair_queue import FairQueue


class Recorder:
    def __init__(self) -> None:
        self.waits: list[float] = []
        self.shed_by: list[tuple[str, str]] = []

    def waited(self, seconds: float) -> None:
        self.waits.append(seconds)

    def shed(self, tenant: str, reason: str) -> None:
        self.shed_by.append((tenant, reason))


def observed(queue: FairQueue) -> Recorder:
    recorder = Recorder()
    queue.observer = recorder
    return recorder


async def test_a_free_slot_is_a_wait_of_zero() -> None:
    queue = FairQueue(capacity=2)
    seen = observed(queue)
    await queue.acquire("a")
    assert seen.waits == [0.0] and seen.shed_by == []


async def test_a_queued_request_reports_how_long_it_waited() -> None:
    queue = FairQueue(capacity=1)
    seen = observed(queue)
    await queue.acquire("a")
    waiter = asyncio.create_task(queue.acquire("b"))
    await asyncio.sleep(0.05)
    queue.release("a")
    await waiter
    assert len(seen.waits) == 2 and seen.waits[0] == 0.0
    assert 0.04 <= seen.waits[1] < 1.0


async def test_a_full_queue_sheds_with_queue_full() -> None:
    queue = FairQueue(capacity=1, max_waiting=0)
    seen = observed(queue)
    await queue.acquire("a")
    with pytest.raises(Overloaded):
        await queue.acquire("b")
    assert seen.shed_by == [("b", "queue_full")]


async def test_a_waiter_past_its_deadline_sheds_with_queue_timeout() -> None:
    queue = FairQueue(capacity=1, deadline_s=0.05)
    seen = observed(queue)
    await queue.acquire("a")
    with pytest.raises(Overloaded):
        await queue.acquire("b")
    assert seen.shed_by == [("b", "queue_timeout")] and seen.waits == [0.0]
    assert queue.waiting == 0


async def test_a_cancelled_waiter_is_neither_a_wait_nor_shed() -> None:
    queue = FairQueue(capacity=1)
    seen = observed(queue)
    await queue.acquire("a")
    waiter = asyncio.create_task(queue.acquire("b"))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert seen.waits == [0.0] and seen.shed_by == []


async def test_without_an_observer_nothing_is_reported() -> None:
    queue = FairQueue(capacity=1, max_waiting=0)
    await queue.acquire("a")
    with pytest.raises(Overloaded):
        await queue.acquire("b")
