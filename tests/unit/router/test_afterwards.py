"""router.afterwards: bookkeeping after the answer, FIFO, exactly once, behind new work."""

from __future__ import annotations

import asyncio
import logging

import pytest

from core.activity import ACTIVITY
from router import afterwards as afterwards_module
from router.afterwards import BATCH, MAX_WAITS, Afterwards


async def _rounds(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_without_a_running_loop_an_item_runs_at_once() -> None:
    ran: list[int] = []
    queue = Afterwards()
    queue.add(ran.append, 1)
    assert ran == [1]
    assert len(queue) == 0


async def test_items_run_after_the_current_step_in_order_each_once() -> None:
    ran: list[int] = []
    queue = Afterwards()
    for i in range(5):
        queue.add(ran.append, i)
    assert ran == []  # not before the answer: the step that queued them goes on first
    await _rounds(3)
    assert ran == [0, 1, 2, 3, 4]
    await _rounds(3)
    assert ran == [0, 1, 2, 3, 4]
    queue.add(ran.append, 5)  # a later item: a new turn
    await _rounds(3)
    assert ran == [0, 1, 2, 3, 4, 5]


async def test_the_queue_waits_behind_new_work_for_at_most_max_waits_rounds() -> None:
    ran: list[int] = []
    queue = Afterwards()
    queue.add(ran.append, 1)
    for _ in range(MAX_WAITS):
        ACTIVITY.n += 1  # a request started, an upstream's bytes came
        await asyncio.sleep(0)
        assert ran == []
    ACTIVITY.n += 1
    await asyncio.sleep(0)
    assert ran == [1]  # waited as long as it may: it runs though work keeps coming


async def test_a_quiet_round_runs_the_queue() -> None:
    ran: list[int] = []
    queue = Afterwards()
    queue.add(ran.append, 1)
    ACTIVITY.n += 1
    await asyncio.sleep(0)
    assert ran == []
    await _rounds(2)  # nothing new: its next turn runs it
    assert ran == [1]


async def test_with_a_batch_waiting_the_queue_waits_no_longer() -> None:
    ran: list[int] = []
    queue = Afterwards()
    for i in range(BATCH - 1):
        queue.add(ran.append, i)
    ACTIVITY.n += 1
    await asyncio.sleep(0)
    assert ran == []  # fewer than a batch: behind the new work
    queue.add(ran.append, BATCH - 1)
    ACTIVITY.n += 1
    await asyncio.sleep(0)
    assert ran == list(range(BATCH))  # a batch: it runs, though new work keeps coming


async def test_a_turn_runs_every_item_waiting() -> None:
    ran: list[int] = []
    queue = Afterwards()
    for i in range(3 * BATCH):
        queue.add(ran.append, i)
    await asyncio.sleep(0)
    assert ran == list(range(3 * BATCH))


async def test_run_all_runs_what_waits_now_and_the_turn_finds_nothing() -> None:
    ran: list[int] = []
    queue = Afterwards()
    queue.add(ran.append, 1)
    queue.add(ran.append, 2)
    queue.run_all()
    assert ran == [1, 2]
    await _rounds(3)
    assert ran == [1, 2]


async def test_an_item_that_raises_is_logged_and_the_rest_run(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[int] = []

    def boom(_: object) -> None:
        raise RuntimeError("the secret prompt")

    queue = Afterwards()
    queue.add(ran.append, 1)
    queue.add(boom, None)
    queue.add(ran.append, 2)
    with caplog.at_level(logging.ERROR, logger=afterwards_module.log.name):
        await _rounds(3)
    assert ran == [1, 2]
    assert "work after an answer failed: RuntimeError" in caplog.text


def test_items_left_by_a_loop_that_ended_run_on_the_next() -> None:
    ran: list[int] = []
    queue = Afterwards()
    first = asyncio.new_event_loop()

    def queue_and_stop() -> None:
        queue.add(ran.append, 1)
        first.stop()  # the loop ends before the queue's turn

    first.call_soon(queue_and_stop)
    first.run_forever()
    first.close()
    assert ran == []

    async def queue_more() -> None:
        queue.add(ran.append, 2)
        await _rounds(3)

    asyncio.run(queue_more())
    assert ran == [1, 2]
