"""How long an event that arrives now waits for the event loop: sampled, as a histogram.

Everything the gateway does runs on one event loop per worker. When the loop
is busy (requests ahead, a long callback, a collection of the garbage
collector), a request that has arrived waits in its socket before the gateway
reads it: time no per-request figure sees, neither the overhead header nor
``sluicegate_overhead_seconds``, which start when the request is read. This
probe measures that wait directly.

A thread wakes every ``interval_s`` and hands the loop a callback through
``call_soon_threadsafe``, as an arriving event would: the loop is woken
through its wake-up descriptor, finishes what it is doing, and runs the
callback in its next turn. The time from the hand-over to the callback
(``perf_counter``, microsecond resolution, whatever the loop's timer
granularity) is observed into ``sluicegate_event_loop_lag_seconds``. A
sample is taken at a random moment of the loop's work, so the histogram is
the distribution of the wait an event arriving at a random moment sees.

The thread holds the GIL only to hand the callback over, ten times a second
by default: nothing measurable for the loop. ``server.loop_lag_interval_s: 0``
turns the probe off.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

perf = time.perf_counter


class LoopLagProbe:
    """Samples ``loop``'s wait every ``interval_s`` into ``observe`` (seconds), from a daemon thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, observe: Callable[[float], None], interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._loop = loop
        self._observe = observe
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="loop-lag", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        loop, observe = self._loop, self._observe

        def arrived(handed: float) -> None:
            observe(perf() - handed)

        while not self._stop.wait(self._interval_s):
            try:
                loop.call_soon_threadsafe(arrived, perf())
            except RuntimeError:  # the loop is closed: nothing left to measure
                return

    def close(self) -> None:
        """Stop sampling; returns once the thread has ended."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
