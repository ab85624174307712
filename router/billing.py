"""Admission against limits and budgets before serving; settlement and the ledger row after.

Tenants without limits or budgets pay nothing here beyond the ledger row. For
the others: the prompt is estimated, the worst case reserved atomically, the
completion bounded by what the budget could reserve, tokens metered on
streams, and the actual cost charged once the request ends — whether it
finished, failed, was cut off, or the client went away. With the in-process
store both steps run inline, without a coroutine; with Redis, settlement is a
task the response waits for while the client is there (its concurrency slot is
free before its next request) and that finishes in the background if the
client went away; ``drain`` waits for all of them.

Settlement charges and releases before the answer; the bookkeeping no client
waits for (the spend metrics, the ``after_answer`` hooks: the access log and
budget alerts, and the ledger row) runs after it, from ``afterwards``
(``router.afterwards``), in the order requests settled. ``after_record``
hooks still run before the answer (the response cache keeps a miss there, so
the client's next request finds it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import msgspec

from budgets.accounting import Account, Accountant, Reservation
from budgets.ledger import Ledger
from budgets.ledger_row import LedgerRow
from budgets.prices import cost_pico
from budgets.tokens import (
    Counter,
    completion_budget,
    count_texts,
    counter_for,
    estimate_prompt_tokens,
    prompt_bound,
)
from core.config import Price
from policies.routing import Deployment
from router.afterwards import Afterwards
from router.batch_context import BatchContext
from router.metrics import Metrics
from serving.base import Usage
from serving.sse import chunk_texts

if TYPE_CHECKING:
    from router.context import RequestContext

log = logging.getLogger("sluicegate.billing")
# What a request costs when its deployment is unknown (it failed before one was chosen).
_NO_PRICE = Price()


def _max_price(plan: list[Deployment], batch: bool) -> Price:
    """Worst case over the deployments a fallback could reach."""
    if len(plan) == 1:
        return _price(plan[0], batch)
    prices = [_price(d, batch) for d in plan]
    return Price(
        input_per_mtok=max(p.input_per_mtok for p in prices),
        output_per_mtok=max(p.output_per_mtok for p in prices),
    )


def _charged(ctx: RequestContext, deployment: Deployment | None) -> Price:
    """What this request pays per token: a response cache hit, the alias's cache price."""
    cache = ctx.cache
    if cache is not None and cache.entry is not None:
        return cache.price
    return _price(deployment, isinstance(ctx, BatchContext))


def _price(deployment: Deployment | None, batch: bool) -> Price:
    """What a request served by ``deployment`` pays: a batch's requests pay its batch price."""
    if deployment is None:
        return _NO_PRICE
    return deployment.config.price.for_batch() if batch else deployment.config.price


class Billing:
    def __init__(self, accountant: Accountant, ledger: Ledger | None, metrics: Metrics) -> None:
        self.accountant = accountant
        self.ledger = ledger
        self.metrics = metrics
        self._pending: set[asyncio.Task[None]] = set()
        self._reserves_inline = accountant.reserves_inline
        # provider --> its token counter, looked up once
        self._counters: dict[str, Counter] = {}
        self._settles_inline = accountant.settles_inline
        # tenant --> its last reservation with a money budget (the share left is worked out when asked)
        self._last: dict[str, Reservation] = {}
        # Called with each request once its cost is known, before it is answered (the response cache's write); never raise.
        self.after_record: list[Callable[[RequestContext], None]] = []
        # Called with each request once it is answered, from ``afterwards`` (the access log, budget alerts); never raise.
        self.after_answer: list[Callable[[RequestContext], None]] = []
        # The bookkeeping no client waits for: these hooks, the spend metrics, the ledger row.
        self.afterwards = Afterwards()

    def remaining_fraction(self, tenant: str) -> float | None:
        last = self._last.get(tenant)
        return last.remaining_fraction if last is not None else None

    def reserve(self, ctx: RequestContext, plan: list[Deployment]) -> Coroutine[Any, Any, None] | None:
        """Reserve the request's limits and budgets; a coroutine to await when that needs I/O, else done.

        With the in-process store and a prompt short enough to bound without
        tokenizing, nothing here awaits: it runs to the end without a coroutine.
        """
        account = self.accountant.account(ctx.principal, ctx.wall_started)
        if not account.accounted:
            return None
        ctx.counter = counter = self._counter(plan[0])
        prompt, exact = 0, True
        if account.estimate:
            bound = prompt_bound(ctx.kind, ctx.body, counter)
            if bound is None:
                return self._reserve_counted(ctx, plan, account, counter)
            prompt, exact = bound, False
        if not self._reserves_inline:
            return self._reserve_async(ctx, plan, account, prompt, exact)
        max_completion = self._max_completion(ctx)
        price = _max_price(plan, isinstance(ctx, BatchContext))
        self._hold(ctx, self.accountant.reserve_now(ctx.request_id, account, prompt, max_completion, price), exact)
        return None

    async def _reserve_counted(self, ctx: RequestContext, plan: list[Deployment], account: Account, counter: Counter) -> None:
        """A prompt too long to bound by its bytes: counted (off the loop when long), then reserved."""
        prompt = await estimate_prompt_tokens(ctx.kind, ctx.body, counter)
        await self._reserve_async(ctx, plan, account, prompt, True)

    async def _reserve_async(self, ctx: RequestContext, plan: list[Deployment], account: Account, prompt: int, exact: bool) -> None:
        max_completion = self._max_completion(ctx)
        price = _max_price(plan, isinstance(ctx, BatchContext))
        self._hold(ctx, await self.accountant.reserve(ctx.request_id, account, prompt, max_completion, price), exact)

    @staticmethod
    def _max_completion(ctx: RequestContext) -> int | None:
        """What the client bounds the completion to: None when it sets no bound; 0 for embeddings."""
        if ctx.kind == "embedding":
            return 0
        body = ctx.body
        if body.get("max_tokens") or body.get("max_completion_tokens") or body.get("max_output_tokens"):
            return completion_budget(body, 0)
        return None

    def _hold(self, ctx: RequestContext, reservation: Reservation, exact: bool) -> None:
        reservation.prompt_exact = exact
        ctx.reservation = reservation
        if reservation.money_limits:
            self._last[ctx.principal.tenant] = reservation
        allowance = reservation.allowance
        if allowance is not None:
            # The budget bounds the completion: tell the upstream, and meter the stream.
            n = ctx.body.get("n")
            ctx.max_tokens = max(1, allowance // (n if isinstance(n, int) and n > 1 else 1))
            ctx.allowance = allowance
        for key in reservation.soft_exceeded:
            tenant = ctx.principal.tenant
            self.metrics.soft_budget_exceeded.labels(tenant).inc()
            log.warning("soft budget exceeded for tenant %s (%s)", tenant, key.rsplit(":", 2)[-2])

    def settle(self, ctx: RequestContext) -> asyncio.Task[None] | None:
        """Charge, release limits and record, as a task of its own.

        Callers that still hold the client await it, so a concurrency slot is
        free before the client can send its next request; a client that went
        away leaves it to finish in the background (``drain`` waits for those).
        """
        usage = ctx.usage
        if usage is not None:
            reservation = ctx.reservation
            deployment = ctx.served
            price = _charged(ctx, deployment)
            if reservation is None:
                # Nothing to release and nothing to count: record it here, no task needed.
                self._record(ctx, usage, cost_pico(usage, price))
                return None
            if self._settles_inline:
                # An in-process store settles without I/O: no task needed either.
                self._record(ctx, usage, self.accountant.settle_now(reservation, usage, price))
                return None
        task = asyncio.get_running_loop().create_task(self._settle(ctx))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _settle(self, ctx: RequestContext) -> None:
        deployment = ctx.served
        usage = ctx.usage if ctx.usage is not None else await self._measured_usage(ctx, deployment)
        price = _charged(ctx, deployment)
        if ctx.reservation is not None:
            cost = await self.accountant.settle(ctx.reservation, usage, price)
        else:
            cost = cost_pico(usage, price)
        self._record(ctx, usage, cost)

    def _record(self, ctx: RequestContext, usage: Usage, cost: int) -> None:
        ctx.cost = cost
        if ctx.usage is None:
            ctx.usage = usage  # counted here: the upstream reported none (the access log and spans read it)
        for hook in self.after_record:
            hook(ctx)
        self.afterwards.add(self._book, ctx)

    def _book(self, ctx: RequestContext) -> None:
        """After the answer: the spend metrics, the ``after_answer`` hooks, the ledger row."""
        self.metrics.settled(ctx)
        for hook in self.after_answer:
            hook(ctx)
        plugins = ctx.snapshot.plugins
        if self.ledger is not None or plugins.on_ledger_row:
            usage = ctx.usage
            assert usage is not None  # _record set it before queuing this
            row = self._row(ctx, ctx.served, usage, ctx.cost)
            if self.ledger is not None:
                self.ledger.record(row)
            if plugins.on_ledger_row:
                plugins.ledger_row(msgspec.structs.asdict(row))

    async def _measured_usage(self, ctx: RequestContext, deployment: Deployment | None) -> Usage:
        """Usage the upstream did not report: counted from what was generated, if anything was.

        Counted with the serving deployment's tokenizer whether or not a budget
        made the reservation pick one: a request without a budget is billed as
        one with a budget would be.
        """
        texts = ctx.generated_text + [t for t in chunk_texts(ctx.generated) if t]
        if not texts:
            return Usage()  # nothing was generated: nothing to charge
        count: Counter = ctx.counter or self._counter(deployment)
        completion = count_texts(count, texts)
        reservation = ctx.reservation
        if reservation is not None and reservation.prompt_estimate and reservation.prompt_exact:
            prompt = reservation.prompt_estimate
        else:
            prompt = await estimate_prompt_tokens(ctx.kind, ctx.body, count)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def _counter(self, deployment: Deployment | None) -> Counter:
        provider = deployment.config.provider if deployment is not None else ""
        counter = self._counters.get(provider)
        if counter is None:
            counter = self._counters[provider] = counter_for(provider)
        return counter

    @staticmethod
    def _row(ctx: RequestContext, deployment: Deployment | None, usage: Usage, cost: int) -> LedgerRow:
        started = int(ctx.wall_started * 1_000_000)
        principal, ttft = ctx.principal, ctx.ttft
        elapsed_us = int(ctx.elapsed * 1_000_000)
        details = usage.prompt_tokens_details
        cache = ctx.cache
        # positionally, in LedgerRow's field order
        return LedgerRow(
            ctx.request_id,
            started,
            principal.tenant,
            principal.key_id,
            ctx.alias,
            ctx.deployment,
            deployment.config.provider if deployment is not None else "",
            usage.prompt_tokens,
            usage.completion_tokens,
            details.cached_tokens if details is not None else 0,
            cost,
            ctx.status,
            started + elapsed_us,
            elapsed_us / 1000,  # milliseconds, to the microsecond
            int(ttft * 1_000_000) / 1000 if ttft is not None else None,
            ctx.error,
            ctx.route_reason,
            dict(ctx.pii_counts) if ctx.pii_counts else {},
            ctx.trace_id,
            ctx.stream,
            ctx.snapshot.version,
            ("mirrored" if ctx.mirror else ctx.arm),
            ctx.batch_id if isinstance(ctx, BatchContext) else None,
            cache.result if cache is not None else None,
            cache.entry_id if cache is not None else None,
            cache.entry.cost if cache is not None and cache.entry is not None else 0,
            ctx.guardrail,
        )

    def record_mirrored(
        self, ctx: RequestContext, deployment: Deployment, usage: Usage, cost: int, account: str,
        status: int, error: str | None, elapsed: float, ttft: float | None,
    ) -> None:
        """The ledger row of a call mirrored to a canary: billed to ``account``, never to the tenant, no budget touched."""
        plugins = ctx.snapshot.plugins
        if self.ledger is None and not plugins.on_ledger_row:
            return
        row = self._row(ctx, deployment, usage, cost)
        elapsed_us = int(elapsed * 1_000_000)
        mirrored = (
            msgspec.structs.replace(
                row,
                request_id=f"{ctx.request_id}-shadow",
                tenant=account,
                key_id="shadow",
                deployment=deployment.name,
                status=status,
                error=error,
                finished_us=row.started_us + elapsed_us,
                latency_ms=elapsed_us / 1000,
                ttft_ms=int(ttft * 1_000_000) / 1000 if ttft is not None else None,
                pii_entities={},
                arm="shadow",
                cache=None,
                cache_entry=None,
                saved=0,
                guardrail=None,
            )
        )
        if self.ledger is not None:
            self.ledger.record(mirrored)
        if plugins.on_ledger_row:
            plugins.ledger_row(msgspec.structs.asdict(mirrored))

    async def drain(self) -> None:
        """Wait for every settlement under way, then run the bookkeeping still queued."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        self.afterwards.run_all()
