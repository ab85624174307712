"""The worker: reads a queue, runs each task's handler, commits the outcome, then acknowledges.

One loop per worker moves due retries back to the stream, takes over entries
of dead workers (XAUTOCLAIM past the visibility timeout) every half timeout,
and reads new entries for its free slots (``concurrency`` tasks at once).
Each entry is handled in its own asyncio task. It is claimed in the store
first (one round trip when all is well); when the claim fails, the task says
why:

- no such task, or already final ──► acknowledged (a duplicate delivery);
  ``dead`` without its dead-letter entry ──► moved there (a worker died between
  the two writes);
- a retry not yet due ──► back in the delayed set;
- running under another worker's live lease ──► looked at again when it lapses.

A claimed task (attempts + 1) delivered more than ``max_attempts`` times
(workers keep dying on it) is dead; any other is run, with a heartbeat that
keeps the lease alive in the store and the entry fresh in Redis.

Outcomes: a result ──► ``succeeded``; ``Permanent`` ──► compensations, ``failed``;
a cancel seen between steps ──► compensations, ``cancelled``; any other
exception ──► the failing step's failure count + 1, then a delayed retry with
backoff and jitter, or ``dead`` and the dead-letter stream once it reaches
``max_attempts``; ``Yield`` (waiting on children) ──► queued again, woken by a
child's finish (and, should that wake-up be lost, by a poll after
``wait_poll_s``). A final child wakes its parent.

Stopping: ``stop(grace_s)`` stops reading, lets running tasks finish within
the grace, and cancels the rest without acknowledging them: their entries stay
pending and another worker reclaims them after the visibility timeout, where
the memoised steps are not run again. Trouble with Redis or the store while
handling an entry leaves it pending the same way. A cancel that a library
answers with an error of its own (asyncpg cutting a connection) is still a
stop: ``cancelling()`` is checked wherever errors are caught, and the
heartbeat also stops on a flag, so that no run outlives its stop.

Log lines are ``key=value`` with the task's id, tenant, kind, attempt and
trace id, never its input, result or error text (only the exception's type).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping

from sluicegate_orchestrator.backoff import Random, RetryPolicy
from sluicegate_orchestrator.client import Orchestrator
from sluicegate_orchestrator.context import StepContext, Yield, as_json
from sluicegate_orchestrator.hooks import Hooks
from sluicegate_orchestrator.model import DEFAULT_QUEUE, Json, Permanent, Task, TaskCancelled, TaskStatus, error_text
from sluicegate_orchestrator.queue import Entry

Handler = Callable[[StepContext], Awaitable[Json]]
log = logging.getLogger("sluicegate.orchestrator")


def cancelling() -> bool:
    """Whether this task has been asked to stop (some libraries answer a cancel with an error of their own)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Worker:
    def __init__(
        self, orchestrator: Orchestrator, handlers: Mapping[str, Handler], *, queue: str = DEFAULT_QUEUE,
        consumer: str | None = None, concurrency: int = 8, visibility_timeout_s: float = 30.0,
        retry: RetryPolicy | None = None, block_ms: int = 1000, wait_poll_s: float = 30.0,
        rng: Random | None = None, hooks: Hooks | None = None,
    ) -> None:  # fmt: skip
        if concurrency < 1 or visibility_timeout_s <= 0:
            raise ValueError("concurrency must be at least 1 and the visibility timeout positive")
        self.orchestrator = orchestrator
        self.store = orchestrator.store
        self.queue = orchestrator.queue(queue)
        self.handlers = dict(handlers)
        self.consumer = consumer or default_consumer()
        self.concurrency = concurrency
        self.visibility_timeout_s = visibility_timeout_s
        # The lease in the store lapses a third of the timeout before the entry may be reclaimed:
        # a worker that takes over a dead worker's entry finds its lease lapsed, and claims it at
        # once, so the entry (and its delivery count) stays the same. Renewed every third.
        self.lease_s = visibility_timeout_s * 2 / 3
        self.retry = retry or RetryPolicy()
        self.block_ms = block_ms
        self.wait_poll_s = wait_poll_s
        self.rng: Random = rng or random.Random()
        self.hooks = hooks or Hooks()
        self.clock = orchestrator.clock
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        if self._loop_task is None:
            self._stopping.clear()
            self._loop_task = asyncio.create_task(self._loop(), name=f"orchestrator-worker-{self.consumer}")
        return self._loop_task

    async def stop(self, *, grace_s: float = 10.0) -> None:
        """Stop reading; running tasks get ``grace_s`` to finish, the rest stay pending for another worker."""
        self._stopping.set()
        if self._loop_task is not None:
            # Its Redis calls have deadlines; should it still not end, it is cut short (nothing to lose: it holds no task).
            done, _ = await asyncio.wait({self._loop_task}, timeout=self.block_ms / 1000 + 3 * self.queue.timeout_s)
            if not done:
                self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._inflight and grace_s > 0:
            await asyncio.wait(set(self._inflight), timeout=grace_s)
        left = list(self._inflight)
        for task in left:
            task.cancel()
        if left:
            await asyncio.gather(*left, return_exceptions=True)
            log.info("event=worker.stopped consumer=%s left_pending=%d", self.consumer, len(left))

    # --- the loop -----------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        grouped = False
        next_reclaim = 0.0
        while not self._stopping.is_set():
            try:
                if not grouped:
                    await self.queue.ensure_group()
                    grouped = True
                await self.queue.promote(now=self.clock())
                free = self.concurrency - len(self._inflight)
                if free > 0 and loop.time() >= next_reclaim:
                    next_reclaim = loop.time() + self.visibility_timeout_s / 2
                    reclaimed = await self.queue.reclaim(self.consumer, min_idle_ms=int(self.visibility_timeout_s * 1000), count=free)
                    if reclaimed:
                        self.hooks.reclaimed(len(reclaimed))
                        log.info("event=worker.reclaimed consumer=%s entries=%d", self.consumer, len(reclaimed))
                        self._dispatch(reclaimed)
                        free -= len(reclaimed)
                if free <= 0:
                    await asyncio.wait(set(self._inflight), timeout=self.block_ms / 1000, return_when=asyncio.FIRST_COMPLETED)
                    continue
                self._dispatch(await self.queue.read(self.consumer, count=free, block_ms=self.block_ms))
            except Exception as exc:  # noqa: BLE001 - Redis away: wait, carry on; nothing was acknowledged
                log.warning("event=worker.loop_failed consumer=%s error=%s", self.consumer, type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=1.0)

    def _dispatch(self, entries: list[Entry]) -> None:
        for entry in entries:
            task = asyncio.create_task(self._handle(entry))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _handle(self, entry: Entry) -> None:
        try:
            await self._process(entry)
        except Exception as exc:  # noqa: BLE001 - left pending: reclaimed after the visibility timeout
            log.warning("event=task.handling_failed task=%s tenant=%s error=%s", entry.task_id, entry.tenant, type(exc).__name__)

    async def _process(self, entry: Entry) -> None:
        now = self.clock()
        claimed = await self.store.claim(entry.tenant, entry.task_id, owner=self.consumer, now=now, lease_s=self.lease_s)
        if claimed is None:
            await self._not_claimed(entry, now)
            return
        if entry.deliveries > claimed.max_attempts:
            error = f"the workers running this task were lost {entry.deliveries - 1} times"
            await self._dead(entry, claimed, error, cause="WorkerLost")
            self.hooks.finished(claimed.kind, "dead", 0.0)
            return
        await self._run(entry, claimed)

    async def _not_claimed(self, entry: Entry, now: float) -> None:
        """Why the claim failed decides what becomes of the entry."""
        task = await self.store.get(entry.tenant, entry.task_id)
        if task is None:
            log.warning("event=task.unknown task=%s tenant=%s", entry.task_id, entry.tenant)
            await self.queue.ack(entry.entry_id)
        elif task.status == "dead":
            await self.queue.dead_letter(entry)  # a worker died between the store's "dead" and the dead-letter entry
        elif task.final:
            await self.queue.ack(entry.entry_id)  # a duplicate delivery
        elif task.status == "queued" and task.not_before is not None and task.not_before > now:
            await self.queue.retry(entry, due=task.not_before)  # a retry not yet due
        elif task.status == "running" and task.lease_until is not None and task.lease_until >= now:
            await self.queue.retry(entry, due=task.lease_until)  # running elsewhere: look again when the lease lapses
        else:
            await self.queue.retry(entry, due=now + self.visibility_timeout_s)  # changed under us: look again later

    # --- one run --------------------------------------------------------------------

    async def _run(self, entry: Entry, task: Task) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.hooks.started(task.kind)
        self._log("task.started", task)
        ctx = StepContext(self.orchestrator, task)
        # Beats through the settling too: compensations may take a while, and the lease must outlive them.
        beating = asyncio.Event()
        beating.set()
        heartbeat = asyncio.create_task(self._heartbeat(entry, task, beating))
        try:
            status = await self._settle(entry, ctx, await self._call(ctx))
        finally:
            # Told twice: a library may turn a cancel into an error of its own, and the flag still holds.
            beating.clear()
            heartbeat.cancel()
            await asyncio.wait({heartbeat}, timeout=self.visibility_timeout_s)
        self.hooks.finished(task.kind, status, loop.time() - started)

    async def _call(self, ctx: StepContext) -> Json | BaseException:
        handler = self.handlers.get(ctx.task.kind)
        try:
            if handler is None:
                raise Permanent(f"no handler for task kind {ctx.task.kind!r}")
            result = as_json(await handler(ctx), "the handler's result")
            if ctx.task.cancel_requested:  # a run to compensate that met no step boundary
                raise TaskCancelled(ctx.task.id)
            return result
        except (Exception, Yield, TaskCancelled) as exc:  # the outcome; CancelledError (a stop) is not caught
            if cancelling():
                raise asyncio.CancelledError from exc  # a stop that a library turned into its own error
            return exc

    async def _settle(self, entry: Entry, ctx: StepContext, outcome: Json | BaseException) -> str:
        task, now = ctx.task, self.clock()
        if isinstance(outcome, Yield):
            return await self._yield(entry, task, outcome)
        if isinstance(outcome, (Permanent, TaskCancelled)):
            status: TaskStatus = "cancelled" if isinstance(outcome, TaskCancelled) else "failed"
            undone = await ctx.compensate()
            error = "cancelled" if status == "cancelled" else error_text(outcome)
            if undone:
                error += f" (compensation failed: {', '.join(undone)})"
            await self._final(entry, task, status, None, error)
            return status
        if isinstance(outcome, BaseException):
            failures = await self.store.step_failed(task.tenant, task.id, ctx.current_step, now=now)
            if failures >= task.max_attempts:
                await self._dead(entry, task, error_text(outcome), cause=type(outcome).__name__)
                return "dead"
            delay = self.retry.delay(failures, self.rng)
            if not await self.store.requeue(task.tenant, task.id, owner=self.consumer, not_before=now + delay,
                                            error=error_text(outcome), now=now, yielded=False):  # fmt: skip
                return "lost"
            await self.queue.retry(entry, due=now + delay)
            self.hooks.retried(task.kind, delay)
            self._log("task.retry", task, step=ctx.current_step or "(handler)", failures=failures, delay_ms=int(delay * 1000),
                      error=type(outcome).__name__)  # fmt: skip
            return "retried"
        await self._final(entry, task, "succeeded", outcome, None)
        return "succeeded"

    async def _final(self, entry: Entry, task: Task, status: TaskStatus, result: Json, error: str | None) -> None:
        if not await self.store.finish(
            task.tenant, task.id, owner=self.consumer, status=status, result=result, error=error, now=self.clock()
        ):
            self._log("task.lease_lost", task)  # another worker has it now; its entry is its own to acknowledge
            return
        await self.queue.ack(entry.entry_id)
        self._log(f"task.{status}", task)
        await self._wake_parent(task)

    async def _dead(self, entry: Entry, task: Task, error: str, *, cause: str) -> None:
        if not await self.store.finish(
            task.tenant, task.id, owner=self.consumer, status="dead", result=None, error=error, now=self.clock()
        ):
            return
        await self.queue.dead_letter(entry)
        self._log("task.dead", task, error=cause)
        await self._wake_parent(task)

    async def _yield(self, entry: Entry, task: Task, waiting: Yield) -> str:
        now = self.clock()
        if not await self.store.requeue(task.tenant, task.id, owner=self.consumer, not_before=None, error=None, now=now, yielded=True):
            return "lost"
        await self.queue.retry(entry, due=now + self.wait_poll_s)  # the poll, should every wake-up be lost
        # A child that finished while this run was looking could not wake a running parent: look once more.
        for child_id in waiting.waiting_on:
            child = await self.store.get(task.tenant, child_id)
            if child is not None and child.final:
                await self.queue.enqueue(task.id, task.tenant)
                break
        self._log("task.yielded", task, children=len(waiting.waiting_on))
        return "yielded"

    async def _wake_parent(self, task: Task) -> None:
        if task.parent_id is None:
            return
        parent = await self.store.get(task.tenant, task.parent_id)
        if parent is not None and parent.status == "queued":
            await self.orchestrator.queue(parent.queue).enqueue(parent.id, parent.tenant)

    async def _heartbeat(self, entry: Entry, task: Task, beating: asyncio.Event) -> None:
        interval = self.visibility_timeout_s / 3
        while beating.is_set():
            await asyncio.sleep(interval)
            try:
                if not beating.is_set():
                    return
                if not await self.store.renew(task.tenant, task.id, owner=self.consumer, until=self.clock() + self.lease_s):
                    return  # another worker has it now: keeping the entry fresh would only hold it from them
                await self.queue.touch(self.consumer, entry.entry_id)
            except Exception as exc:  # the next beat tries again; the lease outlasts one miss
                if cancelling():
                    raise asyncio.CancelledError from exc
                log.warning("event=task.heartbeat_failed task=%s error=%s", task.id, type(exc).__name__)

    def _log(self, event: str, task: Task, **fields: object) -> None:
        extra = "".join(f" {k}={v}" for k, v in fields.items())
        log.info(
            "event=%s task=%s tenant=%s kind=%s attempt=%d trace=%s consumer=%s%s",
            event, task.id, task.tenant, task.kind, task.attempts, task.trace_id, self.consumer, extra,
        )  # fmt: skip
