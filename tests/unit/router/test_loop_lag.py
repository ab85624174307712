"""The event loop's lag probe: a blocked loop is seen as long as it was blocked; the probe stops cleanly."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from core.config import ServerConfig
from router.loop_lag import LoopLagProbe
from router.metrics import Metrics


async def test_a_blocked_loop_shows_its_wait() -> None:
    samples: list[float] = []
    probe = LoopLagProbe(asyncio.get_running_loop(), samples.append, interval_s=0.005)
    probe.start()
    try:
        await asyncio.sleep(0.05)  # idle: handed-over callbacks run at once
        idle = list(samples)
        time.sleep(0.2)  # the loop blocked, as by a long callback; the probe keeps handing over
        await asyncio.sleep(0.05)
    finally:
        probe.close()
    assert idle, "no sample while the loop was idle"
    blocked = samples[len(idle) :]
    # The first hand-over during the block waits for nearly all of it.
    assert max(blocked) >= 0.1
    assert min(idle) < 0.1


async def test_close_ends_the_thread_and_a_closed_loop_ends_it_too() -> None:
    before = {t.name for t in threading.enumerate()}
    probe = LoopLagProbe(asyncio.get_running_loop(), lambda _: None, interval_s=0.001)
    probe.start()
    assert "loop-lag" in {t.name for t in threading.enumerate()} - before
    probe.close()
    assert "loop-lag" not in {t.name for t in threading.enumerate()} - before

    other = asyncio.new_event_loop()
    other.close()
    orphan = LoopLagProbe(other, lambda _: None, interval_s=0.001)
    orphan.start()
    thread = orphan._thread
    assert thread is not None
    thread.join(timeout=5)
    assert not thread.is_alive()  # call_soon_threadsafe on a closed loop: it returned by itself


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LoopLagProbe(asyncio.new_event_loop(), lambda _: None, interval_s=0)


async def test_metrics_sample_the_loop_into_the_histogram_and_stop_on_close() -> None:
    metrics = Metrics()
    metrics.start(loop_lag_interval_s=0.005)
    try:
        await asyncio.sleep(0.1)
    finally:
        metrics.close()
    count = metrics.registry.get_sample_value("sluicegate_event_loop_lag_seconds_count")
    assert count is not None and count >= 3
    after = count
    await asyncio.sleep(0.05)
    assert metrics.registry.get_sample_value("sluicegate_event_loop_lag_seconds_count") == after  # stopped


async def test_off_by_default_in_metrics_and_on_by_default_in_the_config() -> None:
    metrics = Metrics()
    metrics.start()
    try:
        assert metrics._loop_lag_probe is None
    finally:
        metrics.close()
    assert ServerConfig().loop_lag_interval_s == 0.1
