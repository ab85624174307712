"""The gateway's batch runner: finds batches to start or resume, claims them, runs each as a ``BatchJob``.

It looks every ``batches.poll_interval_s`` (and at once when this replica
creates or cancels a batch) at the unfinished batches, claims those nobody
runs (``router.batch_claims``), and runs them side by side. Batch requests
are capped per alias at ``batches.max_concurrent`` on this replica, across
all batches, so an alias without a queue is not flooded either; an alias with
a queue also makes them wait in its ``batch`` class, behind every interactive
request. A batch passed through to an upstream's Batch API is polled there
instead (``router.batch_native``), under the same claim.
"""

from __future__ import annotations

import asyncio
import logging

from core.errors import GatewayError
from router.batch_job import BatchJob, BatchServices
from router.batch_native import run_native
from router.batch_records import BatchError
from router.batch_state import failed

log = logging.getLogger("sluicegate.batches")
# Runs in a row that may fail unexpectedly before the batch is failed instead of retried.
_MAX_CRASHES = 3


class BatchRunner:
    def __init__(self, services: BatchServices) -> None:
        self.s = services
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._jobs: dict[str, BatchJob] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._crashes: dict[str, int] = {}
        self._loop_task: asyncio.Task[None] | None = None

    def slot(self, alias: str) -> asyncio.Semaphore:
        """The alias's share of this replica's batch concurrency."""
        slot = self._slots.get(alias)
        if slot is None:
            slot = self._slots[alias] = asyncio.Semaphore(self.s.settings.max_concurrent)
        return slot

    def wake(self) -> None:
        """Look now: a batch was created or cancelled here."""
        self._wake.set()

    @property
    def running(self) -> list[str]:
        return list(self._tasks)

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop())

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop scheduling; requests in flight get ``grace_s`` to finish (their results kept), then are cancelled."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for job in self._jobs.values():
            job.halt()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.s.claims.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self.scan()
            except Exception as exc:  # noqa: BLE001 - the loop outlives any one look; the next one tries again
                log.error("looking for batches failed: %s", type(exc).__name__)
            try:
                await asyncio.wait_for(self._wake.wait(), self.s.settings.poll_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()

    async def scan(self) -> None:
        """Claim and start every unfinished batch that no process runs."""
        for tenant, batch_id in await self.s.batches.active():
            if batch_id not in self._tasks and await self.s.claims.claim(batch_id):
                self._tasks[batch_id] = asyncio.create_task(self._run(tenant, batch_id))

    async def _run(self, tenant: str, batch_id: str) -> None:
        finished = False
        try:
            record = await self.s.batches.get(tenant, batch_id)
            if record is not None:
                job = self._jobs[batch_id] = BatchJob(self.s, record, self.slot, run_native)
                finished = await job.run()
            self._crashes.pop(batch_id, None)
        except Exception as exc:
            # Left unfinished: claimed again at a later look, and resumed where its results end.
            if isinstance(exc, GatewayError) and exc.retryable:
                # A store (S3, PostgreSQL) out for a while is no defect of the batch: never failed for it.
                log.warning("batch %s paused: %s", batch_id, type(exc).__name__)
            else:
                # Unless it keeps failing.
                log.error("batch %s stopped: %s", batch_id, type(exc).__name__, exc_info=exc)
                finished = await self._crashed(tenant, batch_id)
        finally:
            self._jobs.pop(batch_id, None)
            self._tasks.pop(batch_id, None)
            await self.s.claims.release(batch_id, finished)

    async def _crashed(self, tenant: str, batch_id: str) -> bool:
        """Count a run that failed unexpectedly; the third in a row fails the batch rather than retry it for ever."""
        crashes = self._crashes[batch_id] = self._crashes.get(batch_id, 0) + 1
        if crashes < _MAX_CRASHES:
            return False
        self._crashes.pop(batch_id, None)
        error = BatchError(code="internal_error", message="The gateway failed to run this batch.")
        try:
            await self.s.batches.update(tenant, batch_id, lambda r: failed(r, [error], self.s.clock()))
        except Exception as exc:  # noqa: BLE001 - the store is failing too: the next look tries again
            log.error("batch %s could not be marked failed: %s", batch_id, type(exc).__name__)
            return False
        return True
