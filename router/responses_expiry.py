"""The sweep that deletes expired stored responses, owned by the gateway's lifecycle.

Expiry itself needs no sweep: every store skips an expired row on each read
and delete (``Retention``). The sweep only gives the space back. Each round
deletes batches of at most ``batch`` rows, each its own short transaction,
until a batch comes back short or ``max_batches`` ran, so that a backlog (a
replica that was down for a week) is worked off over several rounds instead
of holding the store in one long call. Rounds start ``interval_s`` apart, the
first after a random share of it so that replicas started together do not
sweep together; nothing depends on that, as two sweeps at once each delete
what the other did not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

from router.metrics import Metrics
from router.responses_records import ResponseStore

log = logging.getLogger("sluicegate.responses")

INTERVAL_S = 600.0
BATCH = 500
MAX_BATCHES = 100


class ResponseSweeper:
    def __init__(
        self, store: ResponseStore, metrics: Metrics, *, interval_s: float = INTERVAL_S, batch: int = BATCH,
        max_batches: int = MAX_BATCHES, jitter: Callable[[], float] = random.random,
    ) -> None:  # fmt: skip
        self._store = store
        self._metrics = metrics
        self._interval_s = interval_s
        self._batch = batch
        self._max_batches = max_batches
        self._jitter = jitter
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="responses-expiry")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def sweep(self) -> int:
        """One round: expired rows deleted in batches; how many went."""
        removed = 0
        for _ in range(self._max_batches):
            count = await self._store.sweep(self._batch)
            removed += count
            if count:
                self._metrics.responses_expired.inc(count)
            if count < self._batch:
                break
            await asyncio.sleep(0)  # requests waiting on the store go between batches
        if removed:
            log.info("deleted %d expired stored responses", removed)
        return removed

    async def _run(self) -> None:
        delay = self._interval_s * self._jitter()
        while True:
            await asyncio.sleep(delay)
            delay = self._interval_s
            try:
                await self.sweep()
            except Exception as exc:  # noqa: BLE001 - the next round tries again; a sweep never stops the gateway
                log.warning("expired stored responses were not swept: %s", type(exc).__name__)
