"""The `batch` class: below `low`, never the last free slot, never ahead of an interactive waiter."""

from __future__ import annotations

import asyncio

from policies.fair_queue import FairQueue


async def test_batch_requests_leave_the_last_slot_free() -> None:
    queue = FairQueue(capacity=3, headroom=0)
    await queue.acquire("t", priority="batch")
    await queue.acquire("t", priority="batch")
    third = asyncio.create_task(queue.acquire("t", priority="batch"))
    await asyncio.sleep(0.01)
    assert not third.done() and queue.in_use == 2
    # an interactive request takes the slot the batch left, at once
    await asyncio.wait_for(queue.acquire("t"), 0.1)
    assert queue.in_use == 3
    queue.release("t")  # the interactive one is done: the batch still may not take the last slot
    await asyncio.sleep(0.01)
    assert not third.done()
    queue.release("t")  # a batch one is done: its slot goes to the waiting batch request
    await asyncio.wait_for(third, 0.1)
    assert queue.in_use == 2


async def test_a_freed_slot_goes_to_any_interactive_waiter_first() -> None:
    queue = FairQueue(capacity=2, headroom=0)
    await queue.acquire("t")
    await queue.acquire("t")
    order: list[str] = []

    async def one(name: str, priority: str) -> None:
        await queue.acquire("t", priority=priority)
        order.append(name)

    batch = asyncio.create_task(one("batch", "batch"))
    await asyncio.sleep(0)
    low = asyncio.create_task(one("low", "low"))
    await asyncio.sleep(0)
    queue.release("t")
    await asyncio.sleep(0.01)
    assert order == ["low"]  # the batch request came first and still waits
    queue.release("t")
    queue.release("t")
    await asyncio.wait_for(asyncio.gather(batch, low), 0.1)
    assert order == ["low", "batch"]


async def test_an_interactive_waiter_that_gave_up_does_not_hold_a_batch_request_back() -> None:
    queue = FairQueue(capacity=2, headroom=0, deadline_s=5.0)
    await queue.acquire("t")
    await queue.acquire("t")
    gave_up = asyncio.create_task(queue.acquire("t", priority="low"))
    await asyncio.sleep(0)
    gave_up.cancel()
    await asyncio.gather(gave_up, return_exceptions=True)
    queue.release("t")
    queue.release("t")
    # idle, but the abandoned waiter is still in its class's heap until a dispatch walks it
    await asyncio.wait_for(queue.acquire("t", priority="batch"), 0.1)
    assert queue.in_use == 1


async def test_with_one_slot_a_batch_request_takes_it_when_idle() -> None:
    queue = FairQueue(capacity=1)
    await asyncio.wait_for(queue.acquire("t", priority="batch"), 0.1)
    assert queue.in_use == 1
