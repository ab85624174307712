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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import msgspec

from budgets.prices import cost_pico
from budgets.store import (
    MAX_AMOUNT,
    Admission,
    BudgetRule,
    CounterStore,
    Floors,
    LimitRule,
    Plan,
    StoreUnavailable,
)
from core.config import BudgetConfig, LimitsConfig, Price
from core.errors import GatewayError, InsufficientQuota, Overloaded, RateLimited
from core.principal import Principal
from serving.base import Usage

PICO_PER_MICRO = 10**6
_NEVER = float("inf")


@dataclass(slots=True, frozen=True)
class AccountingSettings:
    # Completion allowance when the client sets no max_tokens.
    default_completion_cap: int = 4096
    lease_ms: int = 900_000
    # What happens when the shared store cannot be reached.
    limits_fail_open: bool = True
    budgets_fail_open: bool = False


class Reservation(msgspec.Struct):
    request_id: str
    prompt_estimate: int
    # Completion tokens this request may produce; None when unbounded by budgets.
    allowance: int | None
    # What was reserved (budget keys name their period): settlement goes by the same.
    plan: Plan
    held: bool = True
    soft_exceeded: tuple[str, ...] = ()
    # What each budget of the plan has left once this reservation counts.
    remaining: tuple[int, ...] = ()
    # (position in the plan's budgets, limit) of its money budgets.
    money_limits: tuple[tuple[int, int], ...] = ()
    # False when prompt_estimate is an upper bound rather than the count.
    prompt_exact: bool = True

    @property
    def remaining_fraction(self) -> float | None:
        """Share of the tightest money budget left after this reservation (worked out only when asked)."""
        if not self.money_limits or not self.remaining:
            return None
        return min(self.remaining[i] / limit for i, limit in self.money_limits)


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


def _limit_rules(scope: str, limits: LimitsConfig | None) -> list[LimitRule]:
    if limits is None:
        return []
    rules = []
    if limits.rpm:
        rules.append(LimitRule(key=f"rpm:{scope}", kind="requests", limit=limits.rpm))
    if limits.tpm:
        rules.append(LimitRule(key=f"tpm:{scope}", kind="tokens", limit=limits.tpm))
    if limits.max_concurrent:
        rules.append(LimitRule(key=f"conc:{scope}", kind="concurrency", limit=limits.max_concurrent))
    return rules


@dataclass(slots=True)
class Account:
    """What a principal's requests reserve, worked out once per principal.

    Budget keys name their period: the store plan is rebuilt once the earliest
    period among them has ended (never changed in place, so reservations may
    keep the plan they were made under).
    """

    principal: Principal
    limits: tuple[LimitRule, ...]
    # (scope, config) of each budget, in plan order
    budgets: list[tuple[str, BudgetConfig]]
    plan: Plan = field(default_factory=Plan)
    refresh_at_ms: float = -1.0  # when the plan is next rebuilt; never once no budget has a period
    accounted: bool = False
    # Whether requests need a prompt estimate (a TPM limit or any budget).
    estimate: bool = False
    hard_budgets: bool = False
    has_money: bool = False
    # Positions in plan.budgets of the budgets in tokens, and of those in money.
    token_budgets: tuple[int, ...] = ()
    money_budgets: tuple[int, ...] = ()
    # (position in plan.budgets, limit) of every money budget: for the share left.
    money_limits: tuple[tuple[int, int], ...] = ()

    def refresh(self, now_ms: float) -> None:
        now = datetime.fromtimestamp(now_ms / 1000, timezone.utc)
        rules, ends = [], []
        for scope, config in self.budgets:
            key, end = budget_key(scope, config, now)
            limit = config.limit * (PICO_PER_MICRO if config.kind == "money" else 1)
            rules.append(BudgetRule(key=key, unit=config.kind, limit=min(limit, MAX_AMOUNT), hard=config.hard, period_end_ms=end))
            if end is not None:
                ends.append(end)
        self.plan = Plan(limits=self.limits, budgets=tuple(rules))
        self.refresh_at_ms = min(ends) if ends else _NEVER


def _account_for(principal: Principal) -> Account:
    tenant_scope = f"t:{principal.tenant}"
    key_scope = f"k:{principal.tenant}:{principal.key_id}"
    limits = tuple(_limit_rules(tenant_scope, principal.tenant_limits) + _limit_rules(key_scope, principal.key_limits))
    budgets = [(tenant_scope, config) for config in principal.tenant_budgets]
    budgets += [(key_scope, config) for config in principal.key_budgets]
    configs = [config for _, config in budgets]
    return Account(
        principal,
        limits=limits,
        budgets=budgets,
        accounted=bool(limits or budgets),
        estimate=bool(budgets) or any(limit.kind == "tokens" for limit in limits),
        hard_budgets=any(config.hard for config in configs),
        has_money=any(config.kind == "money" for config in configs),
        token_budgets=tuple(i for i, config in enumerate(configs) if config.kind == "tokens"),
        money_budgets=tuple(i for i, config in enumerate(configs) if config.kind == "money"),
        money_limits=tuple(
            (i, min(config.limit * PICO_PER_MICRO, MAX_AMOUNT))
            for i, config in enumerate(configs)
            if config.kind == "money" and config.limit
        ),
    )


class Accountant:
    def __init__(self, store: CounterStore, settings: AccountingSettings | None = None) -> None:
        self.store = store
        self.settings = settings or AccountingSettings()
        self._lease_ms = self.settings.lease_ms
        # id of a principal --> its account
        self._accounts: dict[int, Account] = {}
        # An in-process store also offers synchronous forms: no coroutine, no task.
        self._reserve_now: Callable[..., Admission] | None = getattr(store, "reserve_now", None)
        self._settle_now: Callable[[str, int, int], None] | None = getattr(store, "settle_now", None)

    def account(self, principal: Principal, now_s: float | None = None) -> Account:
        """What requests of ``principal`` reserve: ``accounted`` says whether they reserve anything,
        ``estimate`` whether that needs a prompt estimate. ``now_s`` is the request's wall time, if known."""
        # Principals are cached by the key stores; a new object means new settings. The
        # account holds its principal, so the id cannot be reused while the entry lives.
        account = self._accounts.get(id(principal))
        if account is None or account.principal is not principal:
            if len(self._accounts) >= 65_536:
                self._accounts.clear()
            account = self._accounts[id(principal)] = _account_for(principal)
        if account.refresh_at_ms != _NEVER:
            now_ms = (time.time() if now_s is None else now_s) * 1000
            if now_ms >= account.refresh_at_ms:
                account.refresh(now_ms)
        return account

    def _claim(
        self, account: Account, prompt_tokens: int, max_completion: int | None, price: Price
    ) -> tuple[int, int, Floors | None, int | None]:
        """(tokens, money, floors, flexible cap) the request reserves at worst; the flexible cap is the
        completion bound a hard budget may shorten (None when the client bounds the completion itself)."""
        # None: the client set no bound; 0: nothing is generated (embeddings).
        cap = self.settings.default_completion_cap if max_completion is None else max_completion
        tokens = prompt_tokens + cap
        money = prompt_tokens * price.input_per_mtok + cap * price.output_per_mtok if account.has_money else 0
        floors: Floors | None = None
        # Only a hard budget bounds the completion itself; rate limits are
        # corrected after the fact, and the cap is merely what they reserve.
        if max_completion is None and account.hard_budgets:
            floors = (prompt_tokens + 1, prompt_tokens * price.input_per_mtok + price.output_per_mtok if account.has_money else 0)
        if money > MAX_AMOUNT:  # a worst case no budget could hold: it reserves all of one
            money, floors = MAX_AMOUNT, None if floors is None else (floors[0], min(floors[1], MAX_AMOUNT))
        return tokens, money, floors, cap if floors is not None else None

    async def reserve(
        self, request_id: str, account: Account, prompt_tokens: int, max_completion: int | None, price: Price,
        lease_ms: int | None = None,
    ) -> Reservation:  # fmt: skip
        """Reserve everything the request may consume, or raise the refusal; ``lease_ms``: held longer than a request's lease."""
        tokens, money, floors, flexible_cap = self._claim(account, prompt_tokens, max_completion, price)
        try:
            admission = await self.store.reserve(account.plan, request_id, tokens, money, lease_ms or self._lease_ms, floors)
        except StoreUnavailable:
            fail_open = self.settings.budgets_fail_open if account.plan.budgets else self.settings.limits_fail_open
            if not fail_open:
                raise Overloaded("Usage limits cannot be checked right now; retry shortly.", retry_after=1.0) from None
            return Reservation(request_id, prompt_tokens, flexible_cap, account.plan, held=False)
        return self._reservation(request_id, account, prompt_tokens, price, admission, flexible_cap)

    @property
    def reserves_inline(self) -> bool:
        """Whether ``reserve_now`` can be used: the store works without I/O (and never fails)."""
        return self._reserve_now is not None

    def reserve_now(
        self, request_id: str, account: Account, prompt_tokens: int, max_completion: int | None, price: Price
    ) -> Reservation:
        """``reserve`` for an in-process store, without a coroutine."""
        assert self._reserve_now is not None
        tokens, money, floors, flexible_cap = self._claim(account, prompt_tokens, max_completion, price)
        admission = self._reserve_now(account.plan, request_id, tokens, money, self._lease_ms, floors)
        return self._reservation(request_id, account, prompt_tokens, price, admission, flexible_cap)

    def _reservation(
        self, request_id: str, account: Account, prompt_tokens: int, price: Price, admission: Admission, flexible_cap: int | None
    ) -> Reservation:
        if not admission.allowed:
            raise self._refusal(admission.reason, admission.retry_after_ms, admission.key)
        allowance: int | None = None
        if flexible_cap is not None:
            # The completion tokens every budget's (possibly partial) reservation covers.
            allowance, held = flexible_cap, admission.held
            for i in account.token_budgets:
                covered = held[i] - prompt_tokens
                if covered < allowance:
                    allowance = covered
            per_token = price.output_per_mtok
            if per_token:
                prompt_cost = prompt_tokens * price.input_per_mtok
                for i in account.money_budgets:
                    covered = (held[i] - prompt_cost) // per_token
                    if covered < allowance:
                        allowance = covered
            if allowance < 1:
                allowance = 1
        return Reservation(
            request_id, prompt_tokens, allowance, account.plan, True, admission.soft_exceeded, admission.remaining, account.money_limits
        )

    @staticmethod
    def _refusal(reason: str | None, retry_after_ms: int | None, key: str | None = None) -> GatewayError:
        retry = retry_after_ms / 1000 if retry_after_ms else None
        refusal: GatewayError
        if reason == "budget":
            refusal = InsufficientQuota("You exceeded your current quota: the budget for this period is spent.")
            refusal.refused = key
        elif reason == "concurrency":
            refusal = RateLimited("Too many concurrent requests for this tenant or key.", retry_after=retry or 1.0)
            refusal.refused = reason
        else:
            what = "tokens" if reason == "tokens" else "requests"
            refusal = RateLimited(f"Rate limit reached for {what} per minute.", retry_after=retry or 1.0)
            refusal.refused = what
        return refusal

    async def settle(self, reservation: Reservation, usage: Usage, price: Price) -> int:
        """Charge actual usage; returns the cost in pico-USD. Never raises for store outages."""
        cost = cost_pico(usage, price)
        if not reservation.held:
            return cost
        try:
            await self.store.settle(reservation.request_id, usage.prompt_tokens + usage.completion_tokens, min(cost, MAX_AMOUNT))
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
            self._settle_now(reservation.request_id, usage.prompt_tokens + usage.completion_tokens, min(cost, MAX_AMOUNT))
        return cost
