"""The cost ledger: one append-only row per request, written in batches.

``record()`` only appends to a list, so the request path never waits on a
database. Times travel as integer microseconds since the epoch: exact, and
cheap to make for every request; ``started_at``/``finished_at`` give datetimes.
A background task writes batches to a :class:`~budgets.ledger_row.LedgerStore`; when a
write fails the batch goes to a local spool file and is replayed, with
backoff, once the store answers again. Rows are idempotent on
``(request_id, started_at)``, so a replayed duplicate is harmless.

A row is never held in memory for long: every store call has a deadline (the
store's), so a database that hangs rather than fails sends the rows to the
spool once that deadline passes, and ``close()`` spools what is pending before
it waits on anything, then writes what the store takes within ``drain_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from datetime import datetime
from typing import Protocol

import msgspec

from budgets.ledger_query import UsageQuery, UsageRow, UsageSource
from budgets.ledger_row import LedgerRow, LedgerStore, decode_spooled
from budgets.ledger_spool import Spool, replay_spool, write_or_reject

# A row is what record() takes, so the ledger's callers find it here as well.
__all__ = ["BatchingLedger", "Ledger", "LedgerBacklog", "LedgerOptions", "LedgerRow"]

logger = logging.getLogger(__name__)


class Ledger(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def record(self, row: LedgerRow) -> None: ...
    async def flush(self) -> None: ...
    async def usage(self, query: UsageQuery, source: UsageSource = "auto") -> list[UsageRow]: ...
    async def rows(self, tenant: str | None, start: datetime, end: datetime, limit: int) -> list[LedgerRow]: ...
    async def ping(self) -> bool: ...


class LedgerOptions(msgspec.Struct, kw_only=True, frozen=True):
    flush_interval_s: float = 0.2
    batch_size: int = 500  # this many pending rows wake the writer before the interval
    max_batch: int = 5_000  # rows per transaction once a backlog builds: fewer commits
    max_pending: int = 50_000  # beyond this many buffered rows, spill to the spool
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    # close(): pending rows are spooled first; this long is then spent writing to the store.
    drain_s: float = 3.0

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= self.max_batch:
            raise ValueError("need 1 <= batch_size <= max_batch")
        if self.max_pending < self.batch_size:
            raise ValueError("max_pending must be at least batch_size")
        if self.flush_interval_s <= 0 or self.retry_initial_s <= 0 or self.retry_max_s < self.retry_initial_s:
            raise ValueError("intervals must be positive and retry_max_s >= retry_initial_s")
        if self.drain_s < 0:
            raise ValueError("drain_s must not be negative")


class LedgerBacklog(msgspec.Struct, frozen=True):
    """What has not reached the store yet: for the metrics, read when asked."""

    # Rows in memory waiting for the next batch.
    pending_rows: int
    # Bytes of rows in the spool file (the store failed or was down).
    spool_bytes: int
    # False while writes fail and rows go to the spool.
    healthy: bool


class BatchingLedger:
    """A :class:`Ledger` over any :class:`LedgerStore`, with spool and replay."""

    def __init__(self, store: LedgerStore, spool_path: str, options: LedgerOptions | None = None) -> None:
        self._store = store
        self._spool = Spool(spool_path)
        self._opts = options or LedgerOptions()
        self._buffer: list[LedgerRow] = []
        self._wake = asyncio.Event()
        self._drain_lock = asyncio.Lock()  # the loop and flush() never write concurrently
        self._spills: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = False
        self._healthy = True
        self._retry_at = 0.0
        self._retry_delay = self._opts.retry_initial_s
        self._spool_pending = False
        self._spool_gen = 0  # bumped by every completed spool append

    @property
    def spool(self) -> Spool:
        return self._spool

    @property
    def healthy(self) -> bool:
        """False while writes fail and rows are going to the spool."""
        return self._healthy

    def backlog(self) -> LedgerBacklog:
        """Rows waiting in memory and bytes waiting on disk, now (a stat of the spool: cheap enough per scrape)."""
        return LedgerBacklog(len(self._buffer), self._spool.size(), self._healthy)

    async def start(self) -> None:
        """Start the writer; a spool left by an earlier run is replayed in its first round.

        Nothing here waits on the store, so a database that hangs cannot hold up start-up.
        """
        await self._store.open()
        self._spool_pending = await asyncio.to_thread(self._spool.pending)
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def close(self) -> None:
        """Stop within ``drain_s``, losing nothing.

        Pending rows go to the spool before anything here can wait on the store,
        so a SIGKILL at any later moment costs no row. Then, with what is left of
        ``drain_s``, the writer finishes its round and the spool is written to a
        store that answers; whatever is not written by then stays spooled for the
        next start. Rows recorded from now on are spooled as they come.
        """
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._opts.drain_s
        self._closed = self._stopping = True
        self._wake.set()
        await self._settle_spills()
        rows, self._buffer = self._buffer, []
        await self._to_spool(rows)
        if await self._stop_writer(deadline):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline), self._drain_lock:
                    # A store that failed lately is not waited on again unless its retry is due.
                    await self._replay_if_due(force=self._healthy)
                    await self._write_buffer(force=self._healthy)
        await self._keep(self._buffer)
        try:
            await self._store.close(max(0.0, deadline - loop.time()))
        except Exception:  # nothing is left to lose: the store's connections go either way
            logger.exception("ledger: store did not close cleanly")

    async def _stop_writer(self, deadline: float) -> bool:
        """Let the writer end its round by ``deadline``, else cancel it; True if it ended in time."""
        task, self._task = self._task, None
        if task is None:
            return True
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
        if done:
            return True
        task.cancel()  # its batch in flight goes to the spool (see _write_batch)
        await asyncio.wait({task})
        return False

    async def _keep(self, rows: list[LedgerRow]) -> None:
        """Rows still in memory at the end of close(): spooled, or counted as lost."""
        self._buffer = []
        if not rows:
            return
        try:
            await asyncio.to_thread(self._spool.append, rows)
        except OSError:
            logger.exception("ledger: neither the store nor the spool took %d rows; they are lost", len(rows))

    def record(self, row: LedgerRow) -> None:
        if self._closed:
            # A request finishing during shutdown: block briefly rather than lose it.
            try:
                self._spool.append([row])
            except OSError:
                logger.exception("ledger: closed and the spool is not writable; one row lost")
            return
        self._buffer.append(row)
        pending = len(self._buffer)
        if pending > self._opts.max_pending:
            self._spill()
        elif pending >= self._opts.batch_size:
            self._wake.set()

    async def flush(self) -> None:
        """Write everything pending now; a failed write leaves it durable in the spool."""
        await self._settle_spills()
        async with self._drain_lock:
            await self._replay_if_due(force=True)
            await self._write_buffer(force=True)

    async def usage(self, query: UsageQuery, source: UsageSource = "auto") -> list[UsageRow]:
        return await self._store.usage(query, source)

    async def rows(self, tenant: str | None, start: datetime, end: datetime, limit: int) -> list[LedgerRow]:
        return await self._store.rows(tenant, start, end, limit)

    async def ping(self) -> bool:
        return await self._store.ping()

    async def _run(self) -> None:
        if self._spool_pending:
            # What an earlier run left: replayed at once, not after the first interval.
            await self._round(replay_only=True)
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._opts.flush_interval_s)
            self._wake.clear()
            await self._round(replay_only=False)

    async def _round(self, replay_only: bool) -> None:
        try:
            async with self._drain_lock:
                await self._replay_if_due(force=replay_only)
                if not replay_only:
                    await self._write_buffer(force=False)
        except Exception:
            # The writer must outlive any one failed round; the next one retries.
            logger.exception("ledger: writer iteration failed")

    def _spill(self) -> None:
        """Buffer over its bound: hand it to the spool without blocking the caller."""
        rows, self._buffer = self._buffer, []
        task = asyncio.get_running_loop().create_task(self._to_spool(rows))
        self._spills.add(task)
        task.add_done_callback(self._spills.discard)

    async def _settle_spills(self) -> None:
        while self._spills:
            await asyncio.gather(*list(self._spills))

    async def _to_spool(self, rows: list[LedgerRow]) -> None:
        if not rows:
            return
        try:
            await asyncio.to_thread(self._spool.append, rows)
        except OSError:
            # Nowhere durable to put them: keep them in memory for the next round.
            logger.exception("ledger: spool append failed; %d rows kept in memory", len(rows))
            self._buffer[:0] = rows
            return
        self._spool_gen += 1
        self._spool_pending = True

    async def _write_buffer(self, force: bool) -> None:
        """Write the rows pending now, in batches of at most ``max_batch``.

        Rows recorded while these are written wait for the next round (the
        next interval, or sooner once ``batch_size`` are pending). Were they
        taken at once, a writer under steady load would never return to its
        interval: each transaction would carry only the few rows that came in
        while the one before it was written, and pay a whole transaction's
        cost for them (the COMMIT, the rollups' upserts) over and over.
        """
        due = len(self._buffer)
        while due > 0 and self._buffer:
            if not self._healthy and not (force or time.monotonic() >= self._retry_at):
                rows, self._buffer = self._buffer, []
                await self._to_spool(rows)
                return
            batch = self._buffer[: min(self._opts.max_batch, due)]
            del self._buffer[: len(batch)]
            due -= len(batch)
            if not await self._write_batch(batch):
                rows, self._buffer = batch + self._buffer, []
                await self._to_spool(rows)
                return

    async def _write_batch(self, batch: list[LedgerRow]) -> bool:
        try:
            await write_or_reject(self._store, self._spool, batch)
        except asyncio.CancelledError:
            self._spool.append(batch)  # shutting down mid-write: keep the rows, even if it blocks
            raise
        except Exception as exc:  # noqa: BLE001 -- whatever the cause, the rows go to the spool
            self._mark(ok=False, reason=f"write failed ({type(exc).__name__})")
            return False
        self._mark(ok=True, reason="")
        return True

    async def _replay_if_due(self, force: bool) -> None:
        if not self._spool_pending or not (force or time.monotonic() >= self._retry_at):
            return
        generation = self._spool_gen
        try:
            await replay_spool(self._spool, self._store, decode_spooled, self._opts.max_batch)
        except Exception as exc:  # noqa: BLE001 -- unreachable store or unreadable spool: both retried later
            self._mark(ok=False, reason=f"spool replay failed ({type(exc).__name__})")
            return
        self._mark(ok=True, reason="")
        if generation == self._spool_gen:
            self._spool_pending = False

    def _mark(self, ok: bool, reason: str) -> None:
        if ok:
            if not self._healthy:
                logger.info("ledger: store reachable again")
            self._healthy = True
            self._retry_delay = self._opts.retry_initial_s
            return
        if self._healthy:
            logger.warning("ledger: %s; spooling to %s", reason, self._spool.path)
        self._healthy = False
        # Jitter keeps many replicas from probing a recovering database in step.
        self._retry_at = time.monotonic() + self._retry_delay * random.uniform(0.8, 1.2)
        self._retry_delay = min(self._retry_delay * 2, self._opts.retry_max_s)
