from __future__ import annotations

import asyncio

import pytest

from policies.fair_queue import FairQueue
from router.errors import Overloaded


async def _served_order(queue: FairQueue, arrivals: list[tuple[str, int, str]]) -> list[str]:
    """Hold the only slot, queue the arrivals, then release one at a time."""
    await queue.acquire("holder")
    order: list[str] = []

    async def one(name: str, weight: int, priority: str) -> None:
        await queue.acquire(name.split("#")[0], weight, priority)
        order.append(name)

    tasks = []
    for name, weight, priority in arrivals:
        tasks.append(asyncio.create_task(one(name, weight, priority)))
        await asyncio.sleep(0)
    for _ in arrivals:
        queue.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    return order


async def test_capacity_is_respected() -> None:
    queue = FairQueue(capacity=2)
    await queue.acquire("a")
    await queue.acquire("a")
    third = asyncio.create_task(queue.acquire("a"))
    await asyncio.sleep(0.01)
    assert not third.done() and queue.waiting == 1
    queue.release()
    await third
    assert queue.in_use == 2 and queue.waiting == 0


async def test_flooding_tenant_does_not_starve_another() -> None:
    queue = FairQueue(capacity=1)
    arrivals = [(f"a#{i}", 1, "standard") for i in range(30)] + [("b#0", 1, "standard")]
    order = await _served_order(queue, arrivals)
    # b arrived last, behind 30 of a's requests, yet is served second.
    assert order.index("b#0") <= 1


async def test_weights_share_slots() -> None:
    queue = FairQueue(capacity=1)
    arrivals = [(f"a#{i}", 3, "standard") for i in range(12)] + [(f"b#{i}", 1, "standard") for i in range(12)]
    order = await _served_order(queue, arrivals)
    first_eight = [name.split("#")[0] for name in order[:8]]
    assert first_eight.count("a") == 6 and first_eight.count("b") == 2


async def test_priority_classes_go_first() -> None:
    queue = FairQueue(capacity=1)
    order = await _served_order(queue, [("low#0", 1, "low"), ("std#0", 1, "standard"), ("crit#0", 1, "critical")])
    assert order == ["crit#0", "std#0", "low#0"]


async def test_full_queue_sheds_with_503() -> None:
    queue = FairQueue(capacity=1, max_waiting=1)
    await queue.acquire("a")
    waiter = asyncio.create_task(queue.acquire("a"))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as info:
        await queue.acquire("b")
    assert info.value.status == 503 and info.value.headers()["retry-after"] == "1"
    queue.release()
    await waiter


async def test_deadline_sheds_and_frees_the_place() -> None:
    queue = FairQueue(capacity=1, deadline_s=0.05)
    await queue.acquire("a")
    with pytest.raises(Overloaded, match="waited too long"):
        await queue.acquire("b")
    assert queue.waiting == 0
    queue.release()
    assert queue.in_use == 0


async def test_cancelled_waiter_is_skipped() -> None:
    queue = FairQueue(capacity=1)
    await queue.acquire("a")
    gone = asyncio.create_task(queue.acquire("b"))
    stays = asyncio.create_task(queue.acquire("c"))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    queue.release()
    await asyncio.wait_for(stays, 1)
    assert queue.in_use == 1 and queue.waiting == 0
