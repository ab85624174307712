"""What tenants spend and what they are refused: cost, budgets left, rejections, the alias queues.

Labels name tenants, configured aliases and deployments, and fixed reasons:
bounded by the tenant records and the config, never by what a client sends.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from router.metrics_fast import CounterChild, HistogramChild, counter, histogram
from router.metrics_live import Reading

if TYPE_CHECKING:
    from budgets.accounting import Reservation
    from budgets.store import BudgetRule
    from core.principal import Principal
    from router.metrics_view import FinishedRequest

PICO_PER_USD = 10**12
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# The error code of a request the gateway refused before trying any upstream --> rejection reason.
# (An alias queue's refusals, code `overloaded`, are counted by the queue itself: queue_full, queue_timeout.)
REFUSALS = {"rate_limit_exceeded": "rate_limit", "insufficient_quota": "budget"}
# A stream the budget cut short (finish_reason "length"): served, but counted beside the refusals.
CUT_OFF = "budget_cutoff"
BUDGET_LABELS = ("tenant", "scope", "key", "kind", "period")
# budget unit --> what one unit of its counter is in the exported figure
_SCALE = {"money": 1 / PICO_PER_USD, "tokens": 1.0}
_PERIODS = {"day": "daily", "month": "monthly"}
_MAX_KEYS = 10_000


class BudgetFigures:
    """What each budget had left after the last reservation this process made on it.

    Set on settlement from the reservation (so the request's own worst case
    still counts against it: a little less than is left once it is settled);
    read at scrape time, when a budget whose period has ended reads its whole
    limit again, whether or not a request has come since.
    """

    def __init__(self) -> None:
        # label values --> (remaining, limit, end of its period in epoch ms or None, scale)
        self._state: dict[tuple[str, ...], tuple[int, int, int | None, float]] = {}
        # budget key (names its period) --> label values
        self._labels: dict[str, tuple[str, ...]] = {}

    def record(self, principal: Principal, reservation: Reservation) -> None:
        for rule, left in zip(reservation.plan.budgets, reservation.remaining):
            labels = self._labels.get(rule.key)
            if labels is None:
                labels = self._new_labels(principal, rule)
            self._state[labels] = (left, rule.limit, rule.period_end_ms, _SCALE[rule.unit])

    def _new_labels(self, principal: Principal, rule: BudgetRule) -> tuple[str, ...]:
        if len(self._labels) >= _MAX_KEYS:
            self._labels.clear()  # keys of periods long gone
        # budget:t:<tenant>:<kind>:<period> or budget:k:<tenant>:<key>:<kind>:<period> (budgets.accounting.budget_key)
        scope, key = ("tenant", "") if rule.key.startswith("budget:t:") else ("key", principal.key_id)
        period = "lifetime" if rule.key.endswith(":lifetime") else _PERIODS.get(rule.key.rsplit(":", 2)[-2], "other")
        labels = self._labels[rule.key] = (principal.tenant, scope, key, rule.unit, period)
        return labels

    def remaining(self) -> Reading:
        now_ms = time.time() * 1000
        for labels, (left, limit, end, scale) in list(self._state.items()):
            yield labels, (limit if end is not None and now_ms >= end else left) * scale

    def limits(self) -> Reading:
        for labels, (_, limit, _, scale) in list(self._state.items()):
            yield labels, limit * scale


class QueueObserver:
    """What an alias's fair queue reports (``policies.fair_queue.QueueObserver``)."""

    __slots__ = ("_spend", "_wait")

    def __init__(self, wait: HistogramChild, spend: SpendMetrics) -> None:
        self._wait = wait
        self._spend = spend

    def waited(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def shed(self, tenant: str, reason: str) -> None:
        self._spend.reject(tenant, reason)


class SpendMetrics:
    def __init__(self, registry: CollectorRegistry, fast: bool = False) -> None:
        """``fast``: lock-free instruments (``router.metrics_fast``), for one process only."""
        self.cost = counter(
            "sluicegate_cost_usd", "What requests cost (USD, from the ledger's pico-USD), by tenant, model alias and deployment.",
            ("tenant", "model", "deployment"), registry, fast=fast,
        )  # fmt: skip
        self.rejections = counter(
            "sluicegate_rejections", "Requests refused or cut short by admission, by tenant and reason "
            "(rate_limit: RPM or TPM; concurrency; budget; budget_cutoff; queue_full; queue_timeout).",
            ("tenant", "reason"), registry, fast=fast,
        )  # fmt: skip
        self.queue_wait = histogram(
            "sluicegate_queue_wait_seconds", "Time requests waited for a slot in their alias's queue (0 when one was free), by alias.",
            ("model",), QUEUE_WAIT_BUCKETS, registry, fast=fast,
        )  # fmt: skip
        self.budgets = BudgetFigures()
        self._cost_children: dict[tuple[str, str, str], CounterChild] = {}
        self._rejection_children: dict[tuple[str, str], CounterChild] = {}

    def settled(self, ctx: FinishedRequest, model: str) -> None:
        cost = ctx.cost
        if cost:
            key = (ctx.principal.tenant, model, ctx.deployment)
            child = self._cost_children.get(key)
            if child is None:
                child = self._cost_children[key] = self.cost.labels(*key)
            child.inc(cost / PICO_PER_USD)
        reservation = ctx.reservation
        if reservation is not None and reservation.remaining:
            self.budgets.record(ctx.principal, reservation)

    def finished(self, ctx: FinishedRequest) -> None:
        """Count a refusal of the gateway's own (not an upstream's), or a stream the budget cut off."""
        error = ctx.error
        if error is None:
            return
        if error == CUT_OFF:
            self.reject(ctx.principal.tenant, error)
        elif not ctx.attempted:
            reason = REFUSALS.get(error)
            if reason == "rate_limit" and ctx.refused == "concurrency":
                reason = "concurrency"
            if reason is not None:
                self.reject(ctx.principal.tenant, reason)

    def reject(self, tenant: str, reason: str) -> None:
        key = (tenant, reason)
        child = self._rejection_children.get(key)
        if child is None:
            child = self._rejection_children[key] = self.rejections.labels(*key)
        child.inc()

    def queue_observer(self, alias: str) -> QueueObserver:
        return QueueObserver(self.queue_wait.labels(alias), self)
