"""In-process counter store for the embedded (single replica) mode.

Every method runs to completion without awaiting, so on one event loop each
reserve and settle is atomic without a lock.

Expired leases and records are dropped lazily, the way Redis drops expired
keys, and cheaply: each set of leases keeps a lower bound on its earliest
expiry (``due``). Nothing is scanned until that moment has passed; a sweep then
drops what has expired and makes the bound exact again. With leases far longer
than requests, a sweep happens about once per lease period, so admission costs
a few dictionary operations per limit or budget and no heap work.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from budgets.store import (
    RECORD_GRACE_MS,
    Admission,
    BudgetRule,
    Floors,
    LimitRule,
    Plan,
    budget_view,
    check_charge,
    check_claim,
)

# What a reservation with no budgets answers (nothing in it is ever modified).
_ALLOWED = Admission(allowed=True)
_NEVER = float("inf")
_NO_HOLD = (0, 0)


def _epoch_ms() -> int:
    # Epoch time, not monotonic: windows align to the same boundaries as in Redis.
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _Window:
    index: int
    used: int = 0


@dataclass(slots=True)
class _Slots:
    """Concurrency slots: holder request id --> lease expiry (ms)."""

    holders: dict[str, int] = field(default_factory=dict)
    due: float = _NEVER  # no holder's lease ends before this

    def sweep(self, now: int) -> None:
        holders = self.holders
        for request_id in [rid for rid, until in holders.items() if until <= now]:
            del holders[request_id]
        self.due = min(holders.values(), default=_NEVER)


@dataclass(slots=True)
class _Budget:
    spent: int = 0
    reserved: int = 0
    # request id --> (amount held, lease expiry ms)
    holds: dict[str, tuple[int, int]] = field(default_factory=dict)
    due: float = _NEVER  # no hold's lease ends before this
    expire_at: int | None = None

    def sweep(self, now: int) -> None:
        """Release the holds whose lease has ended (their replica is gone)."""
        holds = self.holds
        for request_id in [rid for rid, (_, until) in holds.items() if until <= now]:
            self.reserved -= holds.pop(request_id)[0]
        self.due = min((until for _, until in holds.values()), default=_NEVER)


@dataclass(slots=True)
class _Record:
    """What settle works from: every counter one admitted request holds."""

    expire_at: int
    slots: list[_Slots]
    tokens: list[tuple[_Window, int, int]]  # window, its index then, estimate
    budgets: tuple[BudgetRule, ...]


class MemoryCounterStore:
    def __init__(self, clock: Callable[[], int] | None = None) -> None:
        self._clock = clock or _epoch_ms
        self._windows: dict[tuple[str, str], _Window] = {}
        self._slots: dict[str, _Slots] = {}
        self._budgets: dict[str, _Budget] = {}
        self._records: dict[str, _Record] = {}
        self._records_due: float = _NEVER
        self._budget_heap: list[tuple[int, str]] = []

    async def reserve(
        self,
        plan: Plan,
        request_id: str,
        tokens: int,
        money: int,
        lease_ms: int,
        floors: Floors | None = None,
        now_ms: int | None = None,
    ) -> Admission:
        return self.reserve_now(plan, request_id, tokens, money, lease_ms, floors, now_ms)

    async def settle(self, request_id: str, tokens: int = 0, money: int = 0) -> None:
        self.settle_now(request_id, tokens, money)

    # The synchronous forms: callers on the event loop may skip the await (and,
    # for settle, the task a store with I/O would need).

    def reserve_now(
        self,
        plan: Plan,
        request_id: str,
        tokens: int,
        money: int,
        lease_ms: int,
        floors: Floors | None = None,
        now_ms: int | None = None,
    ) -> Admission:
        check_claim(request_id, tokens, money, lease_ms, floors)
        now = now_ms if now_ms is not None else self._clock()
        if self._records_due <= now or (self._budget_heap and self._budget_heap[0][0] <= now):
            self._purge(now)
        record = self._records.get(request_id)
        if record is None or record.expire_at <= now:
            refusal = self._check_limits(plan.limits, tokens, now)
            if refusal is not None:
                return refusal
            takes = self._check_budgets(plan.budgets, tokens, money, floors, now) if plan.budgets else []
            if isinstance(takes, Admission):
                return takes
            self._reserve(plan, request_id, tokens, now, now + lease_ms, takes)
        if not plan.budgets:
            return _ALLOWED
        return self._allowed(plan.budgets, request_id)

    def settle_now(self, request_id: str, tokens: int = 0, money: int = 0) -> None:
        check_charge(tokens, money)
        now = self._clock()
        if self._records_due <= now or (self._budget_heap and self._budget_heap[0][0] <= now):
            self._purge(now)
        record = self._records.pop(request_id, None)
        if record is None or record.expire_at <= now:
            return
        for slots in record.slots:
            slots.holders.pop(request_id, None)
        for window, index, estimate in record.tokens:
            # Corrections only matter inside the window the estimate went into.
            if window.index == index:
                window.used += tokens - estimate
        for rule in record.budgets:
            self._settle_budget(rule, request_id, tokens if rule.unit == "tokens" else money, now)

    async def release(self, request_id: str) -> None:
        self.settle_now(request_id)

    async def budget_state(self, key: str) -> tuple[int, int]:
        now = self._clock()
        self._purge(now)
        state = self._budget_now(key, now)
        return (0, 0) if state is None else (state.spent, state.reserved)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    # -- reserve helpers -------------------------------------------------------

    def _check_limits(self, limits: tuple[LimitRule, ...], tokens: int, now: int) -> Admission | None:
        for limit in limits:
            kind = limit.kind
            if kind == "concurrency":
                slots = self._slots.get(limit.key)
                if slots is None or len(slots.holders) < limit.limit:
                    continue
                if slots.due <= now:
                    slots.sweep(now)
                if len(slots.holders) >= limit.limit:
                    return Admission(allowed=False, reason="concurrency", key=limit.key)
                continue
            index = now // limit.window_ms
            window = self._windows.get((kind, limit.key))
            used = window.used if window is not None and window.index == index else 0
            if used + (tokens if kind == "tokens" else 1) > limit.limit:
                retry_after = (index + 1) * limit.window_ms - now
                return Admission(allowed=False, reason=kind, key=limit.key, retry_after_ms=retry_after)
        return None

    def _check_budgets(
        self, budgets: tuple[BudgetRule, ...], tokens: int, money: int, floors: Floors | None, now: int
    ) -> Admission | list[int]:
        """A refusal, or the amount to take from each budget (less than asked when flexible)."""
        takes: list[int] = []
        for budget in budgets:
            tokens_unit = budget.unit == "tokens"
            take = tokens if tokens_unit else money
            # Expired leases are released on soft budgets too: they report what is used.
            state = self._budget_now(budget.key, now)
            if budget.hard:
                used = state.spent + state.reserved if state is not None else 0
                if used + take > budget.limit:
                    room = budget.limit - used
                    if floors is None or room < floors[0 if tokens_unit else 1]:
                        return Admission(allowed=False, reason="budget", key=budget.key)
                    take = room
            takes.append(take)
        return takes

    def _reserve(self, plan: Plan, request_id: str, tokens: int, now: int, expiry: int, takes: list[int]) -> None:
        record = _Record(expiry + RECORD_GRACE_MS, [], [], plan.budgets)
        for limit in plan.limits:
            kind = limit.kind
            if kind == "concurrency":
                slots = self._slots.get(limit.key)
                if slots is None:
                    slots = self._slots[limit.key] = _Slots()
                slots.holders[request_id] = expiry
                if expiry < slots.due:
                    slots.due = expiry
                record.slots.append(slots)
                continue
            index = now // limit.window_ms
            window = self._windows.get((kind, limit.key))
            if window is None:
                window = self._windows[(kind, limit.key)] = _Window(index)
            elif window.index != index:
                window.index, window.used = index, 0
            if kind == "tokens":
                window.used += tokens
                record.tokens.append((window, index, tokens))
            else:
                window.used += 1
        budgets = self._budgets
        for budget, take in zip(plan.budgets, takes):
            state = budgets.get(budget.key)
            if state is None:
                state = budgets[budget.key] = _Budget()
            state.reserved += take
            state.holds[request_id] = (take, expiry)
            if expiry < state.due:
                state.due = expiry
            if budget.period_end_ms is not None and state.expire_at is None:
                self._set_expiry(budget.key, state, budget.expire_at_ms())
        self._records[request_id] = record
        if record.expire_at < self._records_due:
            self._records_due = record.expire_at

    def _allowed(self, budgets: tuple[BudgetRule, ...], request_id: str) -> Admission:
        soft_exceeded: list[str] = []
        remaining: list[int] = []
        held: list[int] = []
        for budget in budgets:
            state = self._budgets[budget.key]
            left, over = budget_view(budget, state.spent, state.reserved)
            remaining.append(left)
            held.append(state.holds.get(request_id, _NO_HOLD)[0])
            if over:
                soft_exceeded.append(budget.key)
        return Admission(allowed=True, remaining=tuple(remaining), held=tuple(held), soft_exceeded=tuple(soft_exceeded))

    # -- shared state helpers --------------------------------------------------

    def _settle_budget(self, rule: BudgetRule, request_id: str, actual: int, now: int) -> None:
        state = self._budget_now(rule.key, now)
        if state is not None:
            hold = state.holds.pop(request_id, None)
            if hold is not None:
                state.reserved -= hold[0]
        if actual:
            # A counter that expired meanwhile starts again, as HINCRBY would.
            if state is None:
                state = self._budgets[rule.key] = _Budget()
            state.spent += actual
            self._set_expiry(rule.key, state, rule.expire_at_ms())

    def _budget_now(self, key: str, now: int) -> _Budget | None:
        """A budget's state with expired leases released, or None if it has none."""
        state = self._budgets.get(key)
        if state is not None and state.due <= now:
            state.sweep(now)
        return state

    def _set_expiry(self, key: str, state: _Budget, expire_at: int | None) -> None:
        if expire_at is not None and expire_at != state.expire_at:
            state.expire_at = expire_at
            heapq.heappush(self._budget_heap, (expire_at, key))

    def _purge(self, now: int) -> None:
        """Forget records and budget counters past their expiry."""
        if self._records_due <= now:
            records = self._records
            for request_id in [rid for rid, record in records.items() if record.expire_at <= now]:
                del records[request_id]
            self._records_due = min((record.expire_at for record in records.values()), default=_NEVER)
        heap = self._budget_heap
        while heap and heap[0][0] <= now:
            expire_at, key = heapq.heappop(heap)
            state = self._budgets.get(key)
            if state is not None and state.expire_at == expire_at:
                del self._budgets[key]
