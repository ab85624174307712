"""Admission against limits and budgets before serving; settlement and the ledger row after.

Tenants without limits or budgets pay nothing here beyond the ledger row. For
the others: the prompt is estimated, the worst case reserved atomically, the
completion bounded by what the budget could reserve, tokens metered on
streams, and the actual cost charged once the request ends — whether it
finished, failed, was cut off, or the client went away. Settlement runs in the
background so that no response waits on it; ``drain`` waits for all of it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from budgets.accounting import Accountant, Reservation
from budgets.ledger import Ledger, LedgerRow
from budgets.prices import cost_pico
from budgets.tokens import Counter, completion_budget, counter_for, estimate_prompt_tokens, prompt_bound
from policies.routing import Deployment
from router.config import Price
from router.metrics import Metrics
from serving.base import Usage
from serving.sse import chunk_text

if TYPE_CHECKING:
    from router.pipeline import RequestContext

log = logging.getLogger("sluicegate.billing")


def _max_price(plan: list[Deployment]) -> Price:
    """Worst case over the deployments a fallback could reach."""
    if len(plan) == 1:
        return plan[0].config.price
    prices = [d.config.price for d in plan]
    return Price(
        input_per_mtok=max(p.input_per_mtok for p in prices),
        output_per_mtok=max(p.output_per_mtok for p in prices),
    )


class Billing:
    def __init__(self, accountant: Accountant, ledger: Ledger | None, metrics: Metrics) -> None:
        self.accountant = accountant
        self.ledger = ledger
        self.metrics = metrics
        self._pending: set[asyncio.Task[None]] = set()
        self._deployments: dict[str, Deployment] = {}
        # tenant --> share of its tightest money budget left, as of its last request
        self._remaining: dict[str, float] = {}

    def remaining_fraction(self, tenant: str) -> float | None:
        return self._remaining.get(tenant)

    def know(self, deployments: dict[str, Deployment]) -> None:
        self._deployments = deployments

    async def reserve(self, ctx: RequestContext, plan: list[Deployment]) -> None:
        principal = ctx.principal
        accounted, estimate = self.accountant.needs(principal)
        if not accounted:
            return
        counter = counter_for(plan[0].config.provider)
        ctx.counter = counter
        prompt, exact = 0, True
        if estimate:
            bound = prompt_bound(ctx.kind, ctx.body, counter)
            if bound is None:
                prompt = await estimate_prompt_tokens(ctx.kind, ctx.body, counter)
            else:
                prompt, exact = bound, False
        body = ctx.body
        bounded = ctx.kind == "embedding" or bool(body.get("max_tokens") or body.get("max_completion_tokens"))
        max_completion = (0 if ctx.kind == "embedding" else completion_budget(ctx.body, 0)) if bounded else None
        ctx.reservation = await self.accountant.reserve(ctx.request_id, principal, prompt, max_completion, _max_price(plan))
        ctx.reservation.prompt_exact = exact
        if ctx.reservation.remaining_fraction is not None:
            self._remaining[principal.tenant] = ctx.reservation.remaining_fraction
        allowance = ctx.reservation.allowance
        if allowance is not None:
            # The budget bounds the completion: tell the upstream, and meter the stream.
            n = ctx.body.get("n") if isinstance(ctx.body.get("n"), int) else 1
            ctx.body = {**ctx.body, "max_tokens": max(1, allowance // max(1, n))}
            ctx.allowance = allowance
        for key in ctx.reservation.soft_exceeded:
            self.metrics.soft_budget_exceeded.labels(principal.tenant).inc()
            log.warning("soft budget exceeded for tenant %s (%s)", principal.tenant, key.rsplit(":", 2)[-2])

    def settle(self, ctx: RequestContext) -> asyncio.Task[None] | None:
        """Charge, release limits and record, as a task of its own.

        Callers that still hold the client await it, so a concurrency slot is
        free before the client can send its next request; a client that went
        away leaves it to finish in the background (``drain`` waits for those).
        """
        if ctx.usage is not None:
            if ctx.reservation is None:
                # Nothing to release and nothing to count: record it here, no task needed.
                self._record(ctx, ctx.usage)
                return None
            if self.accountant.settles_inline:
                # An in-process store settles without I/O: no task needed either.
                self._record(ctx, ctx.usage, self.accountant.settle_now(ctx.reservation, ctx.usage, self._price(ctx)))
                return None
        task = asyncio.get_running_loop().create_task(self._settle(ctx))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _settle(self, ctx: RequestContext) -> None:
        usage = ctx.usage if ctx.usage is not None else await self._measured_usage(ctx)
        cost = None
        if ctx.reservation is not None:
            cost = await self.accountant.settle(ctx.reservation, usage, self._price(ctx))
        self._record(ctx, usage, cost)

    def _price(self, ctx: RequestContext) -> Price:
        deployment = self._deployments.get(ctx.deployment)
        return deployment.config.price if deployment is not None else Price()

    def _record(self, ctx: RequestContext, usage: Usage, cost: int | None = None) -> None:
        deployment = self._deployments.get(ctx.deployment)
        if cost is None:
            cost = cost_pico(usage, deployment.config.price) if deployment is not None else 0
        ctx.cost = cost
        if self.ledger is not None:
            self.ledger.record(self._row(ctx, deployment, usage, ctx.cost))

    @staticmethod
    async def _measured_usage(ctx: RequestContext) -> Usage:
        """Usage the upstream did not report: counted from what was generated, if anything was."""
        texts = ctx.generated_text + [t for t in map(chunk_text, ctx.generated) if t]
        if not texts:
            return Usage()  # nothing was generated: nothing to charge
        count: Counter = ctx.counter or counter_for("")
        completion = sum(count(t) for t in texts)
        reservation = ctx.reservation
        if reservation is not None and reservation.prompt_estimate and reservation.prompt_exact:
            prompt = reservation.prompt_estimate
        else:
            prompt = await estimate_prompt_tokens(ctx.kind, ctx.body, count)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    @staticmethod
    def _row(ctx: RequestContext, deployment: Deployment | None, usage: Usage, cost: int) -> LedgerRow:
        started = datetime.fromtimestamp(ctx.wall_started, timezone.utc)
        return LedgerRow(
            request_id=ctx.request_id,
            tenant=ctx.principal.tenant,
            key_id=ctx.principal.key_id,
            model=ctx.alias,
            deployment=ctx.deployment,
            provider=deployment.config.provider if deployment is not None else "",
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            cost=cost,
            latency_ms=round(ctx.elapsed * 1000, 3),
            ttft_ms=round(ctx.ttft * 1000, 3) if ctx.ttft is not None else None,
            status=ctx.status,
            error=ctx.error,
            route_reason=ctx.route_reason,
            pii_entities=dict(ctx.pii_counts),
            trace_id=ctx.trace_id,
            stream=ctx.stream,
            started_at=started,
            finished_at=started + timedelta(seconds=ctx.elapsed),
        )

    async def drain(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
