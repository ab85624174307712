from __future__ import annotations

import asyncio

import pytest

from core.errors import Overloaded
from policies.fair_queue import FairQueue


async def _served_order(queue: FairQueue, arrivals: list[tuple[str, int, str]]) -> list[str]:
    """Hold the only slot, queue the arrivals, then release one at a time."""
    await queue.acquire("holder")
    order: list[str] = []
    holders = ["holder"]

    async def one(name: str, weight: int, priority: str) -> None:
        await queue.acquire(name.split("#")[0], weight, priority)
        order.append(name)
        holders.append(name.split("#")[0])

    tasks = []
    for name, weight, priority in arrivals:
        tasks.append(asyncio.create_task(one(name, weight, priority)))
        await asyncio.sleep(0)
    for served in range(1, len(arrivals) + 1):
        queue.release(holders.pop(0))
        while len(order) < served:  # the next holder takes its slot
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
    queue.release("a")
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
    queue.release("a")
    await waiter


async def test_deadline_sheds_and_frees_the_place() -> None:
    queue = FairQueue(capacity=1, deadline_s=0.05)
    await queue.acquire("a")
    with pytest.raises(Overloaded, match="waited too long"):
        await queue.acquire("b")
    assert queue.waiting == 0
    queue.release("a")
    assert queue.in_use == 0


async def test_cancelled_waiter_is_skipped() -> None:
    queue = FairQueue(capacity=1)
    await queue.acquire("a")
    gone = asyncio.create_task(queue.acquire("b"))
    stays = asyncio.create_task(queue.acquire("c"))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    queue.release("a")
    await asyncio.wait_for(stays, 1)
    assert queue.in_use == 1 and queue.waiting == 0


async def test_a_flooding_tenant_leaves_headroom_for_another() -> None:
    queue = FairQueue(capacity=4, headroom=1)
    await queue.acquire("light")
    queue.release("light")  # light has been seen: it is active
    for _ in range(3):
        await queue.acquire("heavy")
    fourth = asyncio.create_task(queue.acquire("heavy"))
    await asyncio.sleep(0)
    assert not fourth.done() and queue.in_use == 3  # the last slot is kept back
    await asyncio.wait_for(queue.acquire("light"), 0.1)  # and light gets it at once
    assert queue.in_use == 4
    queue.release("light")
    await asyncio.sleep(0)
    assert not fourth.done()  # still kept back while light is active
    fourth.cancel()


async def test_a_light_tenant_being_served_still_finds_a_slot_for_its_next_request() -> None:
    queue = FairQueue(capacity=4, headroom=1)
    await queue.acquire("light")  # light's first request is being served
    await queue.acquire("heavy")
    await queue.acquire("heavy")
    third = asyncio.create_task(queue.acquire("heavy"))
    await asyncio.sleep(0)
    assert not third.done() and queue.in_use == 3  # one held by light, one kept free for it
    await asyncio.wait_for(queue.acquire("light"), 0.1)  # light's second request does not wait
    assert queue.in_use == 4 and not third.done()
    third.cancel()


async def test_a_tenant_alone_gets_every_slot() -> None:
    queue = FairQueue(capacity=4, headroom=1)
    for _ in range(4):
        await asyncio.wait_for(queue.acquire("only"), 0.1)
    assert queue.in_use == 4


async def test_a_kept_back_slot_is_handed_out_once_the_other_tenant_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("policies.fair_queue.time.monotonic", lambda: now[0])
    queue = FairQueue(capacity=2, headroom=1)
    await queue.acquire("light")
    queue.release("light")
    await queue.acquire("heavy")
    second = asyncio.create_task(queue.acquire("heavy"))
    await asyncio.sleep(0)
    assert not second.done()
    now[0] += 2.0  # light has been quiet for longer than the window
    third = asyncio.create_task(queue.acquire("heavy"))
    await asyncio.wait_for(second, 0.1)  # the next arrival finds light gone and hands out the slot
    assert not third.done() and queue.in_use == 2
    third.cancel()


async def test_headroom_never_keeps_back_a_single_slot() -> None:
    queue = FairQueue(capacity=1, headroom=3)
    assert queue.headroom == 0
    await queue.acquire("a")
    queue.release("a")
    await asyncio.wait_for(queue.acquire("b"), 0.1)
