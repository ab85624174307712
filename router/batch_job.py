"""One batch, run by the replica that claimed it: validate, run every line, write the files.

Results are appended to the batch's parts as requests finish, so a batch
resumed after a restart (or by another replica once the claim lapsed) skips
the lines already done. A checkpoint every ``batches.poll_interval_s`` writes
the counts, renews the claim, and looks for what stops a run: a cancel, the
24 h window, the creator's key revoked or tenant disabled.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime

from core.config import BatchesConfig
from core.errors import InsufficientQuota, NotFound, Overloaded, RateLimited, UpstreamRateLimited
from core.principal import Principal
from router.batch_claims import BatchClaims
from router.batch_native_plan import native_deployment, with_native
from router.batch_records import ACTIVE, BatchError, BatchRecord, BatchStore, BatchUsage, Part, RequestCounts
from router.batch_request import batch_principal, done_id, expired_line, line_usage, response_usage, result_line, run_line
from router.batch_state import counted, expired, failed, finalizing, finished, validated
from router.batch_validate import ENDPOINTS, BatchLine, LineError, numbered_lines, parse_line, validate
from router.files_store import FileStore
from router.pipeline import Pipeline
from router.snapshot import Snapshot
from router.tenant_records import StoreUnavailable, TenantNotFound, TenantStore, principal_of, usable
from router.unary import Outcome, new_request_id

log = logging.getLogger("sluicegate.batches")
_MAX_RETRY_WAIT_S = 30.0
_RETRYABLE = (RateLimited, Overloaded, UpstreamRateLimited)
_STOPPED = {
    "revoked": BatchError(code="credential_revoked", message="The API key that created this batch was revoked, or its tenant disabled."),
    "input_missing": BatchError(code="input_file_missing", message="The batch's input file was deleted."),
}


@dataclass(slots=True)
class BatchServices:
    pipeline: Pipeline
    snapshot: Callable[[], Snapshot]
    tenants: TenantStore
    files: FileStore
    batches: BatchStore
    claims: BatchClaims
    settings: BatchesConfig
    clock: Callable[[], float] = field(default=time.time)


async def creator(tenants: TenantStore, tenant_id: str, key_id: str) -> Principal | None:
    """The principal of the key that created a batch, as of now; None once it is revoked, expired or its tenant disabled."""
    try:
        tenant = await tenants.get_tenant(tenant_id)
        keys = await tenants.list_keys(tenant_id)
    except TenantNotFound:
        return None
    key = next((k for k in keys if k.id == key_id), None)
    if key is None or not usable(tenant, key, datetime.now(UTC)):
        return None
    return principal_of(tenant, key, "")  # a principal holds no hash


# Runs a batch passed through to an upstream's Batch API (``router.batch_native.run_native``): True once it has a final status.
NativeRun = Callable[["BatchServices", BatchRecord, Principal | None, Callable[[], bool]], Awaitable[bool]]


def output_file_id(batch_id: str, part: Part) -> str:
    """The same id each time a batch's file is written, so writing it again after a crash replaces it."""
    return "file-" + hashlib.sha256(f"{batch_id}:{part}".encode()).hexdigest()[:24]


class BatchJob:
    def __init__(
        self, services: BatchServices, record: BatchRecord, slots: Callable[[str], asyncio.Semaphore], native: NativeRun | None = None
    ) -> None:
        self.s = services
        self._native = native
        self.record = record
        self.tenant, self.id = record.tenant, record.batch.id
        self.kind = ENDPOINTS[record.batch.endpoint][0]
        self._slots = slots
        self.principal: Principal | None = None
        self.counts = RequestCounts(total=record.batch.request_counts.total)
        # Tokens of the completed requests (the output file's lines), as the Batch object reports them.
        self.usage = BatchUsage()
        self.done: set[str] = set()
        self._pending: dict[Part, list[bytes]] = {"output": [], "error": []}
        self._write_lock = asyncio.Lock()
        # Set when the run's requests are done: the ticker ends after the checkpoint it may be in, never inside one.
        self._stop_ticking = asyncio.Event()
        self.in_flight = 0
        # Of those, lines waiting for the others' reservations to settle before asking the budget again.
        self._budget_waits = 0
        # Why scheduling stopped: cancelled, expired, revoked, input_missing, or lost (the claim or the process).
        self.stop: str | None = None
        self.exhausted: Outcome | None = None

    def halt(self) -> None:
        """Stop scheduling and leave the batch to whoever claims it next (the process is stopping)."""
        self.stop = "lost"

    async def run(self) -> bool:
        """Take the batch as far as it goes; True once it has a final status."""
        if self.record.batch.status not in ACTIVE:
            return True
        try:
            self.principal = await creator(self.s.tenants, self.tenant, self.record.key_id)
        except StoreUnavailable:
            return False  # unknown for now: asked again at the next look
        status = self.record.batch.status
        if self.principal is not None and status == "validating" and not await self._validate():
            return True
        if self.record.native is not None and self._native is not None:
            return await self._native(self.s, self.record, self.principal, lambda: self.stop == "lost")
        if self.principal is None and status in ("validating", "in_progress"):
            self.stop = "revoked"
        await self._resume()
        if self.stop is None and self.record.batch.status == "in_progress":
            await self._execute()
        if self.stop == "lost":
            return False
        await self._finish()
        return True

    async def _validate(self) -> bool:
        snapshot = self.s.snapshot()
        batch = self.record.batch
        policy = snapshot.policies.routing(self.tenant)
        content = self.s.files.content(self.tenant, batch.input_file_id)
        try:
            result = await validate(content, batch.endpoint, snapshot.router, policy, self.s.settings.max_requests)
        except NotFound:
            await self._update(lambda r: failed(r, [_STOPPED["input_missing"]], self.s.clock()))
            return False
        now = self.s.clock()
        if result.errors:
            await self._update(lambda r: failed(r, result.errors, now, RequestCounts(total=result.total)))
            return False
        self.counts = RequestCounts(total=result.total)
        # A batch of one alias whose deployment has its own Batch API may be passed through to it.
        target = native_deployment(snapshot, self.tenant, result.model) if self._native is not None else None
        await self._update(lambda r: with_native(validated(r, result.total, now, result.model), target))
        return self.record.batch.status == "in_progress"

    async def _update(self, change: Callable[[BatchRecord], BatchRecord]) -> None:
        record = await self.s.batches.update(self.tenant, self.id, change)
        if record is None:
            self.stop = "lost"  # the record is gone: nothing left to write to
            return
        self.record = record

    async def _resume(self) -> None:
        """What earlier runs did: their result lines, counted and skipped."""
        completed = failed_ = 0
        parts: tuple[Part, ...] = ("output", "error")
        for part in parts:
            async for _, raw in numbered_lines(self.s.batches.read(self.tenant, self.id, part)):
                custom_id = done_id(raw)
                if custom_id is not None and custom_id not in self.done:
                    self.done.add(custom_id)
                    if part == "output":
                        completed += 1
                        self.usage.add(line_usage(raw))
                    else:
                        failed_ += 1
        self.counts = RequestCounts(total=self.record.batch.request_counts.total, completed=completed, failed=failed_)

    async def _lines(self) -> AsyncGenerator[BatchLine, None]:
        """The input's requests not done yet (lines that no longer parse, as a file replaced since, are left out)."""
        batch = self.record.batch
        async for number, raw in numbered_lines(self.s.files.content(self.tenant, batch.input_file_id)):
            try:
                line = parse_line(number, raw, batch.endpoint)
            except LineError:
                continue
            if line.custom_id not in self.done:
                yield line

    async def _execute(self) -> None:
        ticker = asyncio.create_task(self._tick())
        running: set[asyncio.Task[None]] = set()
        try:
            async with aclosing(self._lines()) as lines:
                async for line in lines:
                    if self.stop is None and expired(self.record, self.s.clock()):
                        self.stop = "expired"
                    if self.stop is not None:
                        break
                    if self.exhausted is not None:
                        refused = self.exhausted
                        self._record(line.custom_id, Outcome(refused.status, refused.body, new_request_id(), refused.error))
                        continue
                    slot = self._slots(line.model)
                    await slot.acquire()
                    task = asyncio.create_task(self._one(line, slot))
                    running.add(task)
                    task.add_done_callback(running.discard)
            if running:
                await asyncio.gather(*running)
            if self.stop == "expired":
                await self._expire_rest()
        except NotFound:
            self.stop = "input_missing"
        finally:
            for task in running:
                task.cancel()
            self._stop_ticking.set()
            await asyncio.gather(ticker, *running, return_exceptions=True)
            await self._flush()

    async def _one(self, line: BatchLine, slot: asyncio.Semaphore) -> None:
        self.in_flight += 1
        try:
            outcome = await self._attempts(line)
        finally:
            self.in_flight -= 1
            slot.release()
        if outcome is None:
            return  # stopped while waiting to retry: not done, so a later run (or the expiry) sees to it
        if isinstance(outcome.error, InsufficientQuota) and self.exhausted is None:
            self.exhausted = outcome  # the lines after it fail alike, without asking the budget again
        self._record(line.custom_id, outcome)

    async def _attempts(self, line: BatchLine) -> Outcome | None:
        """Run a line until it has an answer; limits and full queues are waited out, as a batch may take its time."""
        wait = 1.0
        while True:
            assert self.principal is not None
            principal = batch_principal(self.principal)
            outcome = await run_line(self.s.pipeline, self.s.snapshot(), principal, self.id, self.kind, line)
            error = outcome.error
            # A budget refused while this batch's other requests hold reservations may pass once they settle.
            busy = isinstance(error, InsufficientQuota) and self.in_flight - self._budget_waits > 1
            if not (isinstance(error, _RETRYABLE) or busy):
                return outcome
            if self.stop is not None:
                return None
            if busy:
                self._budget_waits += 1
                try:
                    await asyncio.sleep(0.1)
                finally:
                    self._budget_waits -= 1
                continue
            assert error is not None
            await asyncio.sleep(min(error.retry_after or wait, _MAX_RETRY_WAIT_S))
            wait = min(wait * 2, _MAX_RETRY_WAIT_S)

    def _record(self, custom_id: str, outcome: Outcome) -> None:
        counts = self.counts
        if outcome.status == 200:
            self._pending["output"].append(result_line(custom_id, outcome))
            counts.completed += 1
            self.usage.add(response_usage(outcome.body))
        else:
            self._pending["error"].append(result_line(custom_id, outcome))
            counts.failed += 1
        self.done.add(custom_id)

    async def _expire_rest(self) -> None:
        async for line in self._lines():
            self._pending["error"].append(expired_line(line.custom_id))
            self.counts.failed += 1
            self.done.add(line.custom_id)

    async def _flush(self) -> None:
        """Append the finished lines to their parts; a line leaves memory only once the store has it."""
        async with self._write_lock:
            for part, lines in self._pending.items():
                if lines:
                    count = len(lines)  # lines recorded during the append stay for the next flush
                    await self.s.batches.append(self.tenant, self.id, part, b"".join(lines[:count]))
                    del lines[:count]

    async def _tick(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._stop_ticking.wait(), self.s.settings.poll_interval_s)
                return
            except TimeoutError:
                pass
            try:
                await self._checkpoint()
            except Exception as exc:  # noqa: BLE001 - the next checkpoint tries again; without them a cancel goes unseen
                log.warning("batch checkpoint failed: %s", type(exc).__name__)

    async def _checkpoint(self) -> None:
        await self._flush()
        counts = RequestCounts(self.counts.total, self.counts.completed, self.counts.failed)
        usage = self.usage.copy()
        await self._update(lambda r: counted(r, counts, usage))
        if self.record.batch.status == "cancelling":
            self.stop = self.stop or "cancelled"
        if not await self.s.claims.claim(self.id):
            self.stop = "lost"
        try:
            principal = await creator(self.s.tenants, self.tenant, self.record.key_id)
        except StoreUnavailable:
            return  # keep running as the key was last known
        if principal is None:
            self.stop = self.stop or "revoked"
        else:
            self.principal = principal

    async def _finish(self) -> None:
        await self._update(lambda r: finalizing(r, self.s.clock()) if self.stop is None else r)
        files = await self._write_files()
        counts, usage = self.counts, self.usage
        stopped = _STOPPED.get(self.stop or "")
        if stopped is not None:
            await self._update(lambda r: failed(r, [stopped], self.s.clock(), counts, files, usage))
        else:
            ran_out = self.stop == "expired"
            await self._update(lambda r: finished(r, counts, files, self.s.clock(), ran_out=ran_out, usage=usage))
        await self.s.batches.drop_parts(self.tenant, self.id)

    async def _write_files(self) -> tuple[str | None, str | None]:
        expires_s = self.record.output_expires_after_s
        expires_at = int(self.s.clock()) + expires_s if expires_s is not None else None
        ids: list[str | None] = []
        parts: tuple[tuple[Part, int], ...] = (("output", self.counts.completed), ("error", self.counts.failed))
        for part, count in parts:
            if not count:
                ids.append(None)
                continue
            made = await self.s.files.create(
                self.tenant, filename=f"{self.id}_{part}.jsonl", purpose="batch_output", content=self._whole_lines(part),
                expires_at=expires_at, file_id=output_file_id(self.id, part),
            )  # fmt: skip
            ids.append(made.id)
        return ids[0], ids[1]

    async def _whole_lines(self, part: Part) -> AsyncIterator[bytes]:
        """A part as clean JSONL: a line a crash cut short is left out, a request's second line too, as when counting."""
        batch: list[bytes] = []
        seen: set[str] = set()
        async for _, raw in numbered_lines(self.s.batches.read(self.tenant, self.id, part)):
            custom_id = done_id(raw)
            # Twice only when an append the store kept was reported failed, and made again.
            if custom_id is not None and custom_id not in seen:
                seen.add(custom_id)
                batch.append(raw + b"\n")
            if len(batch) >= 1000:
                yield b"".join(batch)
                batch.clear()
        if batch:
            yield b"".join(batch)
