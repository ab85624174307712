"""A request's limits and budgets --> one atomic reservation, then settlement from actual usage.

Before serving: the worst case (prompt estimate + completion allowance) is
reserved on every rate limit and budget of the tenant and the key in one store
call. When the client set no ``max_tokens``, budgets are reserved flexibly: as
much as remains (up to a cap), and the completion is limited to what was
reserved — upstream via ``max_tokens``, and on the stream itself as a safety
net. After serving: the actual cost is charged and the rest released.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from budgets.prices import cost_pico
from budgets.store import AdmitRequest, Budget, CounterStore, Decision, Limit, Settlement, StoreUnavailable
from router.auth import Principal
from router.config import BudgetConfig, LimitsConfig, Price
from router.errors import InsufficientQuota, Overloaded, RateLimited
from serving.base import Usage

PICO_PER_MICRO = 10**6


@dataclass(slots=True, frozen=True)
class AccountingSettings:
    # Completion allowance when the client sets no max_tokens.
    default_completion_cap: int = 4096
    lease_ms: int = 900_000
    # What happens when the shared store cannot be reached.
    limits_fail_open: bool = True
    budgets_fail_open: bool = False


@dataclass(slots=True)
class Reservation:
    request_id: str
    prompt_estimate: int
    # Completion tokens this request may produce; None when unbounded by budgets.
    allowance: int | None
    tokens_keys: list[str] = field(default_factory=list)
    token_budgets: list[str] = field(default_factory=list)
    money_budgets: list[str] = field(default_factory=list)
    soft_exceeded: list[str] = field(default_factory=list)
    held: bool = True
    # Share of the tightest money budget left after this reservation.
    remaining_fraction: float | None = None
    # False when prompt_estimate is an upper bound rather than the count.
    prompt_exact: bool = True


def period_key(period: str, now: datetime) -> tuple[str, int | None]:
    """The counter suffix for a budget period, and when the period ends (epoch ms)."""
    if period == "daily":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return f"day:{start:%Y-%m-%d}", int((start + timedelta(days=1)).timestamp() * 1000)
    if period == "monthly":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (start + timedelta(days=32)).replace(day=1)
        return f"month:{start:%Y-%m}", int(following.timestamp() * 1000)
    return "lifetime", None


def budget_key(scope: str, budget: BudgetConfig, now: datetime) -> tuple[str, int | None]:
    suffix, end = period_key(budget.period, now)
    return f"budget:{scope}:{budget.kind}:{suffix}", end


def _limits(scope: str, limits: LimitsConfig | None, tokens: int) -> Iterable[Limit]:
    if limits is None:
        return
    if limits.rpm:
        yield Limit(key=f"rpm:{scope}", kind="requests", limit=limits.rpm, amount=1)
    if limits.tpm:
        yield Limit(key=f"tpm:{scope}", kind="tokens", limit=limits.tpm, amount=tokens)
    if limits.max_concurrent:
        yield Limit(key=f"conc:{scope}", kind="concurrency", limit=limits.max_concurrent, amount=1)


@dataclass(slots=True)
class _BudgetSpec:
    scope: str
    config: BudgetConfig
    limit: int  # in counter units: tokens, or pico-USD
    key: str = ""
    period_end_ms: int | None = None


@dataclass(slots=True)
class _Plan:
    """What a principal's requests reserve, worked out once per principal.

    Budget keys name their period; they are recomputed once the earliest
    period among them has ended.
    """

    principal: Principal
    # Request and concurrency limits take the same amount each time: built once.
    # A tokens limit's amount is the request's estimate: (key, limit) to build from.
    fixed_limits: list[Limit]
    token_limits: list[tuple[str, int]]
    budgets: list[_BudgetSpec]
    refresh_at_ms: float = -1.0
    hard_budgets: bool = False
    # Whether requests need a prompt estimate (a TPM limit or any budget).
    estimate: bool = False
    tokens_keys: list[str] = field(default_factory=list)
    # Current budget keys by kind; replaced (never changed in place) at refresh,
    # so reservations may share them.
    token_budget_keys: list[str] = field(default_factory=list)
    money_budget_keys: list[str] = field(default_factory=list)

    def refresh(self, now_ms: float) -> None:
        now = datetime.fromtimestamp(now_ms / 1000, timezone.utc)
        ends = []
        for spec in self.budgets:
            spec.key, spec.period_end_ms = budget_key(spec.scope, spec.config, now)
            if spec.period_end_ms is not None:
                ends.append(spec.period_end_ms)
        self.token_budget_keys = [spec.key for spec in self.budgets if spec.config.kind == "tokens"]
        self.money_budget_keys = [spec.key for spec in self.budgets if spec.config.kind == "money"]
        self.refresh_at_ms = min(ends) if ends else float("inf")


def _plan_for(principal: Principal) -> _Plan:
    tenant_scope = f"t:{principal.tenant}"
    key_scope = f"k:{principal.tenant}:{principal.key_id}"
    limits = [
        limit
        for scope, config in ((tenant_scope, principal.tenant_limits), (key_scope, principal.key_limits))
        for limit in _limits(scope, config, 0)
    ]
    budgets = [
        _BudgetSpec(scope, config, config.limit * (PICO_PER_MICRO if config.kind == "money" else 1))
        for scope, configs in ((tenant_scope, principal.tenant_budgets), (key_scope, principal.key_budgets))
        for config in configs
    ]
    return _Plan(
        principal,
        fixed_limits=[limit for limit in limits if limit.kind != "tokens"],
        token_limits=[(limit.key, limit.limit) for limit in limits if limit.kind == "tokens"],
        budgets=budgets,
        hard_budgets=any(spec.config.hard for spec in budgets),
        estimate=bool(budgets) or any(limit.kind == "tokens" for limit in limits),
        tokens_keys=[limit.key for limit in limits if limit.kind == "tokens"],
    )


class Accountant:
    def __init__(self, store: CounterStore, settings: AccountingSettings | None = None) -> None:
        self.store = store
        self.settings = settings or AccountingSettings()
        # (tenant, key id) --> the plan of the principal last seen for it
        self._plans: dict[tuple[str, str], _Plan] = {}
        # An in-process store also offers synchronous forms: no coroutine, no task.
        self._admit_now: Callable[[AdmitRequest], Decision] | None = getattr(store, "admit_now", None)
        self._settle_now: Callable[[Settlement], None] | None = getattr(store, "settle_now", None)

    def needs(self, principal: Principal) -> tuple[bool, bool]:
        """(whether requests of ``principal`` are accounted at all, whether they need a prompt estimate)."""
        plan = self._plan(principal)
        return bool(plan.fixed_limits or plan.token_limits or plan.budgets), plan.estimate

    def _plan(self, principal: Principal) -> _Plan:
        ident = (principal.tenant, principal.key_id)
        plan = self._plans.get(ident)
        # Principals are cached by the key stores; a new object means new settings.
        if plan is None or plan.principal is not principal:
            if len(self._plans) >= 65_536:
                self._plans.clear()
            plan = self._plans[ident] = _plan_for(principal)
        now_ms = time.time() * 1000
        if now_ms >= plan.refresh_at_ms:
            plan.refresh(now_ms)
        return plan

    async def reserve(
        self, request_id: str, principal: Principal, prompt_tokens: int, max_completion: int | None, price: Price
    ) -> Reservation:
        """Reserve everything the request may consume, or raise the refusal."""
        # None: the client set no bound; 0: nothing is generated (embeddings).
        cap = self.settings.default_completion_cap if max_completion is None else max_completion
        worst_tokens = prompt_tokens + cap
        plan = self._plan(principal)
        limits = plan.fixed_limits
        if plan.token_limits:
            limits = [*limits, *(Limit(key=key, kind="tokens", limit=limit, amount=worst_tokens) for key, limit in plan.token_limits)]
        # Only a hard budget bounds the completion itself; rate limits are
        # corrected after the fact, and the cap is merely what they reserve.
        flexible = max_completion is None and plan.hard_budgets
        budgets: list[Budget] = []
        reservation = Reservation(
            request_id, prompt_tokens, cap if flexible else None,
            tokens_keys=plan.tokens_keys, token_budgets=plan.token_budget_keys, money_budgets=plan.money_budget_keys,
        )  # fmt: skip
        for spec in plan.budgets:
            config = spec.config
            if config.kind == "tokens":
                amount, floor = worst_tokens, prompt_tokens + 1
            else:
                amount = prompt_tokens * price.input_per_mtok + cap * price.output_per_mtok
                floor = prompt_tokens * price.input_per_mtok + price.output_per_mtok
            budgets.append(
                Budget(key=spec.key, limit=spec.limit, amount=amount, hard=config.hard, period_end_ms=spec.period_end_ms,
                       min_amount=floor if flexible and config.hard else None)
            )
        request = AdmitRequest(request_id=request_id, limits=limits, budgets=budgets, lease_ms=self.settings.lease_ms)
        try:
            decision = self._admit_now(request) if self._admit_now is not None else await self.store.admit(request)
        except StoreUnavailable:
            fail_open = self.settings.budgets_fail_open if budgets else self.settings.limits_fail_open
            if not fail_open:
                raise Overloaded("Usage limits cannot be checked right now; retry shortly.", retry_after=1.0) from None
            reservation.held = False
            return reservation
        if not decision.allowed:
            raise self._refusal(decision.reason, decision.retry_after_ms)
        if not budgets:
            return reservation
        reservation.soft_exceeded = list(decision.soft_exceeded)
        fractions = [decision.remaining.get(b.key, 0) / b.limit for b in budgets if b.key in reservation.money_budgets and b.limit]
        reservation.remaining_fraction = min(fractions) if fractions else None
        if flexible:
            token_keys = set(reservation.token_budgets)
            reservation.allowance = self._allowance(cap, prompt_tokens, price, budgets, token_keys, decision.reserved)
        return reservation

    @staticmethod
    def _allowance(
        cap: int, prompt_tokens: int, price: Price, budgets: list[Budget], token_keys: set[str], reserved: dict[str, int]
    ) -> int:
        """Completion tokens covered by every budget's (possibly partial) reservation."""
        allowance = cap
        for budget in budgets:
            got = reserved.get(budget.key, budget.amount)
            if budget.key in token_keys:
                allowance = min(allowance, got - prompt_tokens)
            elif price.output_per_mtok:
                allowance = min(allowance, (got - prompt_tokens * price.input_per_mtok) // price.output_per_mtok)
        return max(1, allowance)

    @staticmethod
    def _refusal(reason: str | None, retry_after_ms: int | None) -> Exception:
        retry = retry_after_ms / 1000 if retry_after_ms else None
        if reason == "budget":
            return InsufficientQuota("You exceeded your current quota: the budget for this period is spent.")
        if reason == "concurrency":
            return RateLimited("Too many concurrent requests for this tenant or key.", retry_after=retry or 1.0)
        what = "tokens" if reason == "tokens" else "requests"
        return RateLimited(f"Rate limit reached for {what} per minute.", retry_after=retry or 1.0)

    def _settlement(self, reservation: Reservation, usage: Usage, cost: int) -> Settlement:
        tokens = usage.prompt_tokens + usage.completion_tokens
        actual_budget = dict.fromkeys(reservation.token_budgets, tokens)
        for key in reservation.money_budgets:
            actual_budget[key] = cost
        return Settlement(
            request_id=reservation.request_id,
            actual_tokens=dict.fromkeys(reservation.tokens_keys, tokens),
            actual_budget=actual_budget,
        )

    async def settle(self, reservation: Reservation, usage: Usage, price: Price) -> int:
        """Charge actual usage; returns the cost in pico-USD. Never raises for store outages."""
        cost = cost_pico(usage, price)
        if not reservation.held:
            return cost
        try:
            await self.store.settle(self._settlement(reservation, usage, cost))
        except StoreUnavailable:
            # The lease releases the reservation; the ledger row still records the cost.
            pass
        return cost

    @property
    def settles_inline(self) -> bool:
        """Whether ``settle_now`` can be used: the store works without I/O."""
        return self._settle_now is not None

    def settle_now(self, reservation: Reservation, usage: Usage, price: Price) -> int:
        """``settle`` for an in-process store, without a coroutine or a task."""
        assert self._settle_now is not None
        cost = cost_pico(usage, price)
        if reservation.held:
            self._settle_now(self._settlement(reservation, usage, cost))
        return cost
