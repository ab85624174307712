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
# What a request costs when its deployment is unknown (it failed before one was chosen).
_NO_PRICE = Price()


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
        self._reserves_inline = accountant.reserves_inline
        self._settles_inline = accountant.settles_inline
        # tenant --> share of its tightest money budget left, as of its last request
        self._remaining: dict[str, float] = {}

    def remaining_fraction(self, tenant: str) -> float | None:
        return self._remaining.get(tenant)

    def know(self, deployments: dict[str, Deployment]) -> None:
        self._deployments = deployments

    async def reserve(self, ctx: RequestContext, plan: list[Deployment]) -> None:
        principal = ctx.principal
        account = self.accountant.account(principal)
        if not account.accounted:
            return
        counter = counter_for(plan[0].config.provider)
        ctx.counter = counter
        body, kind = ctx.body, ctx.kind
        prompt, exact = 0, True
        if account.estimate:
            bound = prompt_bound(kind, body, counter)
            if bound is None:
                prompt = await estimate_prompt_tokens(kind, body, counter)
            else:
                prompt, exact = bound, False
        if kind == "embedding":
            max_completion: int | None = 0
        elif body.get("max_tokens") or body.get("max_completion_tokens"):
            max_completion = completion_budget(body, 0)
        else:
            max_completion = None
        price = _max_price(plan)
        if self._reserves_inline:
            reservation = self.accountant.reserve_now(ctx.request_id, account, prompt, max_completion, price)
        else:
            reservation = await self.accountant.reserve(ctx.request_id, account, prompt, max_completion, price)
        reservation.prompt_exact = exact
        ctx.reservation = reservation
        if reservation.remaining_fraction is not None:
            self._remaining[principal.tenant] = reservation.remaining_fraction
        allowance = reservation.allowance
        if allowance is not None:
            # The budget bounds the completion: tell the upstream, and meter the stream.
            n = body.get("n")
            ctx.max_tokens = max(1, allowance // (n if isinstance(n, int) and n > 1 else 1))
            ctx.allowance = allowance
        for key in reservation.soft_exceeded:
            self.metrics.soft_budget_exceeded.labels(principal.tenant).inc()
            log.warning("soft budget exceeded for tenant %s (%s)", principal.tenant, key.rsplit(":", 2)[-2])

    def settle(self, ctx: RequestContext) -> asyncio.Task[None] | None:
        """Charge, release limits and record, as a task of its own.

        Callers that still hold the client await it, so a concurrency slot is
        free before the client can send its next request; a client that went
        away leaves it to finish in the background (``drain`` waits for those).
        """
        usage = ctx.usage
        if usage is not None:
            reservation = ctx.reservation
            deployment = self._deployments.get(ctx.deployment)
            price = deployment.config.price if deployment is not None else _NO_PRICE
            if reservation is None:
                # Nothing to release and nothing to count: record it here, no task needed.
                self._record(ctx, deployment, usage, cost_pico(usage, price))
                return None
            if self._settles_inline:
                # An in-process store settles without I/O: no task needed either.
                self._record(ctx, deployment, usage, self.accountant.settle_now(reservation, usage, price))
                return None
        task = asyncio.get_running_loop().create_task(self._settle(ctx))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _settle(self, ctx: RequestContext) -> None:
        usage = ctx.usage if ctx.usage is not None else await self._measured_usage(ctx)
        deployment = self._deployments.get(ctx.deployment)
        price = deployment.config.price if deployment is not None else _NO_PRICE
        if ctx.reservation is not None:
            cost = await self.accountant.settle(ctx.reservation, usage, price)
        else:
            cost = cost_pico(usage, price)
        self._record(ctx, deployment, usage, cost)

    def _record(self, ctx: RequestContext, deployment: Deployment | None, usage: Usage, cost: int) -> None:
        ctx.cost = cost
        if self.ledger is not None:
            self.ledger.record(self._row(ctx, deployment, usage, cost))

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
        started = int(ctx.wall_started * 1_000_000)
        principal, elapsed, ttft = ctx.principal, ctx.elapsed, ctx.ttft
        details = usage.prompt_tokens_details
        # positionally, in LedgerRow's field order
        return LedgerRow(
            ctx.request_id,
            principal.tenant,
            principal.key_id,
            ctx.alias,
            ctx.deployment,
            deployment.config.provider if deployment is not None else "",
            usage.prompt_tokens,
            usage.completion_tokens,
            details.cached_tokens if details is not None else 0,
            cost,
            round(elapsed * 1000, 3),
            round(ttft * 1000, 3) if ttft is not None else None,
            ctx.status,
            ctx.error,
            ctx.route_reason,
            dict(ctx.pii_counts) if ctx.pii_counts else {},
            ctx.trace_id,
            ctx.stream,
            started,
            started + int(elapsed * 1_000_000),
        )

    async def drain(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
