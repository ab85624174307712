"""A batch passed through to its deployment's own Batch API, run by the replica that claimed it.

Chosen at validation (``router.batch_native_plan``). Then, each step
recorded in the batch record (``NativeState``) before the next, so a batch
resumed by another replica carries on where it stopped:

1. reserve the worst case of the whole batch (every line's prompt estimate and
   completion bound, at the batch price) on the tenant's and key's budgets,
   with the budget module's reservation, held as long as a batch may run;
   rate limits are the upstream's batch queue's, not the tenant's RPM/TPM;
2. upload the lines, naming the upstream's model, and create the upstream
   batch (a 4xx fails the batch, naming the status; the reservation released);
3. poll it (each poll renews the claim, so one replica polls a batch), forward
   a cancel (or the creator's key revoked) upstream once, report its counts;
4. once it has ended: its output and error files become the gateway's (the
   alias as model, the gateway's ids), one ledger row per request at the batch
   price through the pipeline's settlement, as the gateway's runner writes
   them, and the reservation settled with the real usage.

An upstream unreachable or failing (5xx, 429, timeouts) is retried with
backoff for as long as it takes; the batch never fails for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterable

from budgets.accounting import Reservation
from budgets.store import Plan
from budgets.tokens import completion_budget, counter_for, estimate_prompt_tokens
from core.config import Price
from core.errors import GatewayError, InsufficientQuota, NotFound, UpstreamRejected
from core.principal import Principal
from policies.routing import Deployment
from router.batch_context import BATCH_ROUTE, BatchContext
from router.batch_job import BatchServices, creator, output_file_id
from router.batch_native_lines import TERMINAL, NativeResult, batch_usage, gateway_result, upstream_line
from router.batch_native_state import REVOKED, final_record, native_changed, progressed
from router.batch_records import BatchError, BatchRecord, BatchUsage, NativeState, Part, RequestCounts
from router.batch_request import expired_line
from router.batch_state import expired, failed, finalizing, finished
from router.batch_validate import ENDPOINTS, LineError, numbered_lines, parse_line
from router.tenant_records import StoreUnavailable
from serving.base import Kind, PromptTokensDetails, Usage
from serving.openai_batches import UpstreamBatch, UpstreamBatches, batch_api

log = logging.getLogger("sluicegate.batches")
# The budget reservation outlives the upstream's 24 h window and its finishing; settled long before.
RESERVATION_LEASE_MS = 48 * 3600 * 1000
# Polls slow down while nothing changes upstream, up to this; so do retries of a failing upstream.
MAX_POLL_S = 60.0
# Statuses of a refused key or account: the upstream batch is still there once the key is fixed.
_CREDENTIALS = frozenset({401, 402, 403})


def _sum(a: Usage, b: Usage) -> Usage:
    prompt, completion = a.prompt_tokens + b.prompt_tokens, a.completion_tokens + b.completion_tokens
    cached = a.cached_tokens + b.cached_tokens
    return Usage(prompt, completion, prompt + completion, PromptTokensDetails(cached) if cached else None)


async def _once(content: bytes) -> AsyncIterator[bytes]:
    yield content


async def run_native(services: BatchServices, record: BatchRecord, principal: Principal | None, halted: Callable[[], bool]) -> bool:
    """What ``BatchJob`` runs for a passed-through batch: True once it has a final status."""
    return await NativeJob(services, record, principal, halted).run()


class NativeJob:
    def __init__(self, services: BatchServices, record: BatchRecord, principal: Principal | None, halted: Callable[[], bool]) -> None:
        assert record.native is not None
        self.s = services
        self.record = record
        self.tenant, self.id = record.tenant, record.batch.id
        self.principal = principal
        self._halted = halted
        self._interval = services.settings.poll_interval_s
        self._last_seen: tuple[str, int, int] | None = None

    @property
    def native(self) -> NativeState:
        assert self.record.native is not None
        return self.record.native

    async def run(self) -> bool:
        """Take the batch as far as it goes; True once it has a final status, False to leave it to a later run."""
        wait = self.s.settings.poll_interval_s
        while not self._halted():
            deployment = self.s.snapshot().deployments.get(self.native.deployment)
            api = batch_api(deployment.engine) if deployment is not None else None
            if deployment is None or api is None:
                # Its config changed under it: the upstream batch is still there; wait for the deployment to be back.
                log.warning("batch %s paused: deployment %s has no native batch API now", self.id, self.native.deployment)
                return False
            try:
                if await self._step(deployment, api):
                    return True
                wait = self.s.settings.poll_interval_s
                delay = self._interval
            except GatewayError as exc:
                # A refused key (401, 403) while polling is the operator's to fix: the batch waits for it.
                if not (exc.retryable or (isinstance(exc, UpstreamRejected) and exc.status in _CREDENTIALS)):
                    raise
                log.warning("batch %s: upstream call failed (%s); retrying in %.1fs", self.id, type(exc).__name__, wait)
                delay, wait = wait, min(wait * 2, MAX_POLL_S)
            if not await self._sleep(delay):
                return False  # another replica has it now
        return False

    async def _sleep(self, delay: float) -> bool:
        """Wait ``delay``, renewing the claim well within its lease; False once another replica has the batch."""
        step = self.s.settings.lease_s / 3
        while True:
            await asyncio.sleep(min(delay, step))
            delay -= step
            if not await self.s.claims.claim(self.id):
                return False
            if delay <= 0 or self._halted():
                return True

    async def _step(self, deployment: Deployment, api: UpstreamBatches) -> bool:
        """One look: submit, or poll and maybe finish; True once the batch has a final status."""
        if not await self._refresh():
            return True  # the record is gone: nothing left to report to
        if self.native.upstream_batch_id is None:
            return await self._submit(deployment, api)
        upstream_id = self.native.upstream_batch_id
        if self._stopping() and not self.native.cancel_sent:
            try:
                await api.cancel(upstream_id)
            except UpstreamRejected:
                pass  # it ended meanwhile (a 4xx: nothing left to cancel); read below as it ended
            stop = None if self.record.batch.status == "cancelling" else "revoked"
            await self._update(lambda r: native_changed(r, cancel_sent=True, stop=stop))
        upstream = await api.retrieve(upstream_id)
        if upstream.status in TERMINAL:
            await self._finish(deployment, api, upstream)
            return True
        self._pace(upstream)
        await self._update(lambda r: progressed(r, upstream, self.s.clock()))
        return False

    def _stopping(self) -> bool:
        return self.record.batch.status == "cancelling" or self.principal is None

    def _pace(self, upstream: UpstreamBatch) -> None:
        """Poll as often as configured while the upstream moves; slower while it does not."""
        counts = upstream.request_counts
        seen = (upstream.status, counts.completed if counts else 0, counts.failed if counts else 0)
        if seen == self._last_seen:
            self._interval = min(self._interval * 1.5, MAX_POLL_S)
        else:
            self._interval = self.s.settings.poll_interval_s
        self._last_seen = seen

    async def _refresh(self) -> bool:
        """The record as kept now (a cancel may have come in), and whether the creator's key still holds."""
        record = await self.s.batches.get(self.tenant, self.id)
        if record is None or record.native is None:
            return False
        self.record = record
        try:
            self.principal = await creator(self.s.tenants, self.tenant, record.key_id)
        except StoreUnavailable:
            pass  # as last known
        return True

    async def _update(self, change: Callable[[BatchRecord], BatchRecord]) -> None:
        record = await self.s.batches.update(self.tenant, self.id, change)
        if record is not None:
            self.record = record

    # -- submitting ---------------------------------------------------------

    async def _submit(self, deployment: Deployment, api: UpstreamBatches) -> bool:
        now = self.s.clock()
        if self._stopping():
            # Nothing upstream yet: end it here.
            await self._release()
            if self.record.batch.status == "cancelling":
                await self._update(lambda r: finished(r, r.batch.request_counts, (None, None), now, ran_out=False))
            else:
                await self._update(lambda r: failed(r, [REVOKED], now))
            return True
        batch = self.record.batch
        if expired(self.record, now):
            # The upstream never took it (it was down all along): every request expired unsent.
            await self._release()
            ids = await self._input_ids() or []
            files = await self._write_files({"output": [], "error": [expired_line(custom_id) for custom_id in ids]})
            counts = RequestCounts(total=batch.request_counts.total, failed=len(ids))
            await self._update(lambda r: finished(r, counts, files, now, ran_out=True, usage=BatchUsage()))
            return True
        kind = ENDPOINTS[batch.endpoint][0]
        lines = await self._upstream_lines(deployment, api, kind)
        if lines is None:
            return True
        content, prompt, completion = lines
        if self.native.reservation_id is None and not await self._reserve(deployment, prompt, completion):
            return True
        try:
            if self.native.upstream_file_id is None:
                file_id = await api.upload(content, f"{self.id}.jsonl")
                await self._update(lambda r: native_changed(r, upstream_file_id=file_id))
            assert self.native.upstream_file_id is not None
            upstream = await api.create(self.native.upstream_file_id, api.endpoint(batch.endpoint), {"sluicegate_batch_id": self.id})
        except UpstreamRejected as exc:
            # A 4xx: the upstream will not take this batch, however often it is asked.
            await self._release()
            error = BatchError(code="upstream_rejected", message=f"The upstream refused the batch (HTTP {exc.status}).")
            await self._update(lambda r: failed(r, [error], self.s.clock()))
            return True
        await self._update(lambda r: native_changed(r, upstream_batch_id=upstream.id, upstream_status=upstream.status))
        log.info("batch %s passed through to deployment %s", self.id, deployment.name)
        return False

    async def _upstream_lines(self, deployment: Deployment, api: UpstreamBatches, kind: Kind) -> tuple[bytes, int, int] | None:
        """The upstream input file, and the batch's worst case: prompt tokens, completion tokens."""
        batch = self.record.batch
        bounded = self._account_budgets() is not None
        cap = self.s.pipeline.billing.accountant.settings.default_completion_cap
        count = counter_for(deployment.config.provider)
        url = api.endpoint(batch.endpoint)
        out: list[bytes] = []
        prompt = completion = 0
        try:
            async for number, raw in numbered_lines(self.s.files.content(self.tenant, batch.input_file_id)):
                try:
                    line = parse_line(number, raw, batch.endpoint)
                except LineError:
                    continue  # validated already: a file replaced since
                out.append(upstream_line(line, url, api.model, kind, cap if bounded else None))
                if bounded:
                    prompt += await estimate_prompt_tokens(kind, line.body, count)
                    completion += 0 if kind == "embedding" else completion_budget(line.body, cap)
        except NotFound:
            await self._release()
            error = BatchError(code="input_file_missing", message="The batch's input file was deleted.")
            await self._update(lambda r: failed(r, [error], self.s.clock()))
            return None
        return b"".join(out), prompt, completion

    def _account_budgets(self) -> Plan | None:
        """The budgets of the creator's key and tenant (None: none to hold)."""
        assert self.principal is not None
        account = self.s.pipeline.billing.accountant.account(self.principal)
        return Plan(budgets=account.plan.budgets) if account.plan.budgets else None

    async def _reserve(self, deployment: Deployment, prompt: int, completion: int) -> bool:
        """Hold the batch's worst case on the budgets (not the rate limits); False when a budget refuses (the batch failed)."""
        assert self.principal is not None
        accountant = self.s.pipeline.billing.accountant
        budgets = self._account_budgets()
        if budgets is None:
            return True
        account = dataclasses.replace(accountant.account(self.principal), limits=(), plan=budgets)
        reservation_id = f"{self.id}:native"
        price = deployment.config.price.for_batch()
        try:
            await accountant.reserve(reservation_id, account, prompt, completion, price, lease_ms=RESERVATION_LEASE_MS)
        except InsufficientQuota as exc:
            error = BatchError(code="insufficient_quota", message=exc.message)
            await self._update(lambda r: failed(r, [error], self.s.clock()))
            return False
        await self._update(lambda r: native_changed(r, reservation_id=reservation_id))
        return True

    async def _release(self, usage: Usage | None = None, price_of: Deployment | None = None) -> None:
        """Settle the batch's reservation: with what it used, or with nothing (released)."""
        reservation_id = self.native.reservation_id
        if reservation_id is None:
            return
        accountant = self.s.pipeline.billing.accountant
        price = price_of.config.price.for_batch() if price_of is not None else Price()
        # The store settles by id: the reservation's other fields are not needed for it.
        await accountant.settle(Reservation(reservation_id, 0, None, Plan()), usage or Usage(), price)

    # -- finishing ----------------------------------------------------------

    async def _finish(self, deployment: Deployment, api: UpstreamBatches, upstream: UpstreamBatch) -> None:
        now = self.s.clock()
        await self._update(lambda r: finalizing(r, now))
        alias = self.record.batch.model or ""
        wanted = await self._input_ids()
        known = set(wanted) if wanted is not None else None
        results: dict[str, NativeResult] = {}
        for file_id in (upstream.output_file_id, upstream.error_file_id):
            if file_id:
                content = await api.content(file_id)
                async for _, raw in numbered_lines(_once(content)):
                    result = gateway_result(raw, alias, self.id)
                    if result is not None and result.custom_id not in results and (known is None or result.custom_id in known):
                        results[result.custom_id] = result
        parts: dict[Part, list[bytes]] = {"output": [], "error": []}
        usage, total = BatchUsage(), Usage()
        for result in results.values():
            parts["output" if result.ok else "error"].append(result.line)
            if result.ok:
                usage.add(batch_usage(result))
            if result.usage is not None:
                total = _sum(total, result.usage)
        if upstream.status == "expired" and wanted is not None:
            parts["error"] += [expired_line(custom_id) for custom_id in wanted if custom_id not in results]
        counts = RequestCounts(total=self.record.batch.request_counts.total, completed=len(parts["output"]), failed=len(parts["error"]))
        files = await self._write_files(parts)
        self._bill(deployment, results.values())
        await self._release(total, deployment)
        await self._update(lambda r: final_record(r, upstream, counts, files, self.s.clock(), usage))

    async def _input_ids(self) -> list[str] | None:
        """The custom ids of the input, in order (None when the input is gone: every upstream line is taken)."""
        batch = self.record.batch
        ids: list[str] = []
        try:
            async for number, raw in numbered_lines(self.s.files.content(self.tenant, batch.input_file_id)):
                try:
                    ids.append(parse_line(number, raw, batch.endpoint).custom_id)
                except LineError:
                    continue
        except NotFound:
            return None
        return ids

    async def _write_files(self, parts: dict[Part, list[bytes]]) -> tuple[str | None, str | None]:
        expires_s = self.record.output_expires_after_s
        expires_at = int(self.s.clock()) + expires_s if expires_s is not None else None
        ids: list[str | None] = []
        order: tuple[Part, ...] = ("output", "error")
        for part in order:
            lines = parts[part]
            if not lines:
                ids.append(None)
                continue
            made = await self.s.files.create(
                self.tenant, filename=f"{self.id}_{part}.jsonl", purpose="batch_output", content=_once(b"".join(lines)),
                expires_at=expires_at, file_id=output_file_id(self.id, part),
            )  # fmt: skip
            ids.append(made.id)
        return ids[0], ids[1]

    def _bill(self, deployment: Deployment, results: Iterable[NativeResult]) -> None:
        """One ledger row per request, at the batch price, as the gateway's runner's rows are written (``Pipeline.finish``)."""
        pipeline = self.s.pipeline
        principal = self.principal or Principal(tenant=self.tenant, key_id=self.record.key_id)
        snapshot = self.s.snapshot()
        batch = self.record.batch
        kind = ENDPOINTS[batch.endpoint][0]
        # The row's start: the same each time (a finish resumed after a crash writes rows the ledger already has).
        started = float(batch.in_progress_at or batch.created_at)
        for result in results:
            ctx = BatchContext(
                request_id=result.request_id, snapshot=snapshot, principal=principal, kind=kind, route=BATCH_ROUTE,
                alias=batch.model or "", body={}, batch_id=self.id, wall_started=started,
            )  # fmt: skip
            pipeline.begin(ctx)
            ctx.served, ctx.deployment = deployment, deployment.name
            ctx.route_reason = "native_batch"
            ctx.usage = result.usage or Usage()
            ctx.status = result.status if result.status != 200 or result.ok else 500
            ctx.error = result.error
            pipeline.finish(ctx)
