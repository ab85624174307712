"""In-process counter store for the embedded (single replica) mode.

Every method runs to completion without awaiting, so on one event loop each
reserve and settle is atomic without a lock.

A plan's counters are looked up once and kept with it (``_Bound``), so the hot
path touches no dictionary by key. Counters are plain sums; what each request
holds lives in its record, and the record is also its lease: once the lease
ends, everything it held is released, the way Redis reclaims the reservations
of a replica that died. Records and budget counters past their period are
dropped lazily and cheaply: the store keeps a lower bound on the next moment
any of them needs attention (``_due``), and nothing is scanned before it has
passed. With leases far longer than requests, that is about once per lease
period.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

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
_ALLOWED = Admission(True)
_NEVER = float("inf")
# Kinds of limit, as the bound plan keeps them.
_REQUESTS, _TOKENS, _CONCURRENCY = 0, 1, 2
_KIND = {"requests": _REQUESTS, "tokens": _TOKENS, "concurrency": _CONCURRENCY}


@dataclass(slots=True)
class _Counter:
    """A limit's state: a fixed window (``index``, ``used``), or concurrency slots in use (``used``)."""

    index: int = -1
    used: int = 0


@dataclass(slots=True)
class _Budget:
    spent: int = 0
    reserved: int = 0
    expire_at: int | None = None


@dataclass(slots=True)
class _Bound:
    """A plan with its counters, in the plan's order."""

    plan: Plan
    limits: list[tuple[int, _Counter, LimitRule]]  # (kind, counter, rule)
    slots: list[_Counter]
    tokens: list[tuple[_Counter, int]]  # token windows and their length (ms)
    budgets: list[tuple[_Budget, BudgetRule, bool]]  # (counter, rule, whether in tokens)
    # Set once a budget counter it holds was dropped: charges then go to a fresh binding.
    stale: bool = False


class _Record(msgspec.Struct):
    """One admitted request: what it holds, and until when."""

    lease_end: int
    expire_at: int  # the lease end plus the grace in which a late settle still charges
    bound: _Bound
    reserved_at: int
    tokens: int  # what it reserved on token windows
    takes: tuple[int, ...]  # what it holds on each budget
    held: bool = True  # False once the lease ended and everything was released


class MemoryCounterStore:
    def __init__(self, clock: Callable[[], int] | None = None) -> None:
        """``clock`` gives epoch milliseconds (tests move time by hand); the default is the wall clock."""
        self._clock = clock
        self._counters: dict[tuple[str, str], _Counter] = {}
        self._budgets: dict[str, _Budget] = {}
        self._bound: dict[int, _Bound] = {}
        self._records: dict[str, _Record] = {}
        # No lease ends, no record expires and no budget period ends before this.
        self._due: float = _NEVER
        self._budget_heap: list[tuple[int, str]] = []
        # claim_once: key --> until when it is held; none expires before ``_claims_due``.
        self._claims: dict[str, float] = {}
        self._claims_due: float = _NEVER

    def _now_ms(self) -> int:
        # Epoch time, not monotonic: windows align to the same boundaries as in Redis.
        return self._clock() if self._clock is not None else time.time_ns() // 1_000_000

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
        check_claim(request_id, tokens, money, lease_ms, floors)
        return self.reserve_now(plan, request_id, tokens, money, lease_ms, floors, now_ms)

    async def settle(self, request_id: str, tokens: int = 0, money: int = 0) -> None:
        check_charge(tokens, money)
        self.settle_now(request_id, tokens, money)

    # The synchronous forms, for callers on the event loop that build their
    # arguments themselves (the accountant): no await, no task, no checks.

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
        if now_ms is not None:
            now = now_ms
        else:
            now = time.time_ns() // 1_000_000 if self._clock is None else self._clock()
        if self._due <= now:
            self._purge(now)
        bound = self._bound.get(id(plan))
        if bound is None or bound.plan is not plan:
            bound = self._bind(plan)
        record = self._records.get(request_id)
        if record is not None:
            return self._held(bound, record)  # a repeated call reserves nothing more
        if bound.limits:
            refusal = self._check_limits(bound, tokens, now)
            if refusal is not None:
                return refusal
        if bound.budgets:
            admission = self._reserve_budgets(bound, tokens, money, floors)
            if not admission.allowed:
                return admission
        else:
            admission = _ALLOWED
        for kind, counter, rule in bound.limits:
            if kind == _CONCURRENCY:
                counter.used += 1
                continue
            index = now // rule.window_ms
            if counter.index != index:
                counter.index, counter.used = index, 0
            counter.used += tokens if kind == _TOKENS else 1
        lease_end = now + lease_ms
        self._records[request_id] = _Record(lease_end, lease_end + RECORD_GRACE_MS, bound, now, tokens, admission.held)
        self._due = min(self._due, lease_end)
        return admission

    def settle_now(self, request_id: str, tokens: int = 0, money: int = 0) -> None:
        now = time.time_ns() // 1_000_000 if self._clock is None else self._clock()
        if self._due <= now:
            self._purge(now)
        record = self._records.pop(request_id, None)
        if record is None:
            return
        bound = record.bound
        if record.held:
            for slots in bound.slots:
                slots.used -= 1
        for window, window_ms in bound.tokens:
            # Corrections only matter inside the window the estimate went into.
            if window.index == record.reserved_at // window_ms:
                window.used += tokens - record.tokens
        if not bound.budgets:
            return
        if bound.stale:
            self._settle_stale(record, tokens, money)
            return
        held = record.held
        for (state, rule, tokens_unit), take in zip(bound.budgets, record.takes):
            if held:
                state.reserved -= take
            actual = tokens if tokens_unit else money
            if actual:
                state.spent += actual
                if state.expire_at is None and rule.period_end_ms is not None:
                    self._set_expiry(rule.key, state, rule.expire_at_ms())

    def _settle_stale(self, record: _Record, tokens: int, money: int) -> None:
        """Settle on budgets of which one counter was dropped since the reservation."""
        if record.held:
            for (state, _, _), take in zip(record.bound.budgets, record.takes):
                state.reserved -= take  # on the counters the reservation went to, dropped or not
        # Charges go to the counters as they are now: one that expired is made anew and,
        # its period being over, dropped again at the next purge, as Redis does.
        for state, rule, tokens_unit in self._bind(record.bound.plan).budgets:
            actual = tokens if tokens_unit else money
            if actual:
                state.spent += actual
                if state.expire_at is None and rule.period_end_ms is not None:
                    self._set_expiry(rule.key, state, rule.expire_at_ms())

    async def release(self, request_id: str) -> None:
        self.settle_now(request_id)

    async def budget_state(self, key: str) -> tuple[int, int]:
        now = self._now_ms()
        if self._due <= now:
            self._purge(now)
        state = self._budgets.get(key)
        return (0, 0) if state is None else (state.spent, state.reserved)

    async def claim_once(self, key: str, expire_at_ms: int | None) -> bool:
        now = self._now_ms()
        if expire_at_ms is not None and expire_at_ms <= now:
            return False
        claims = self._claims
        if self._claims_due <= now:
            # Claims past their expiry are forgotten together, as seldom as any expires.
            for name in [name for name, until in claims.items() if until <= now]:
                del claims[name]
            self._claims_due = min(claims.values(), default=_NEVER)
        if key in claims:
            return False
        until = _NEVER if expire_at_ms is None else expire_at_ms
        claims[key] = until
        self._claims_due = min(self._claims_due, until)
        return True

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    # -- reserve helpers -------------------------------------------------------

    def _bind(self, plan: Plan) -> _Bound:
        """Look up (or create) every counter of ``plan`` once; later calls reuse them."""
        limits: list[tuple[int, _Counter, LimitRule]] = []
        slots: list[_Counter] = []
        tokens: list[tuple[_Counter, int]] = []
        for rule in plan.limits:
            kind = _KIND[rule.kind]
            counter = self._counters.get((rule.kind, rule.key))
            if counter is None:
                counter = self._counters[(rule.kind, rule.key)] = _Counter()
            if kind == _CONCURRENCY:
                slots.append(counter)
            elif kind == _TOKENS:
                tokens.append((counter, rule.window_ms))
            limits.append((kind, counter, rule))
        budgets = []
        for budget in plan.budgets:
            state = self._budgets.get(budget.key)
            if state is None:
                state = self._budgets[budget.key] = _Budget()
            budgets.append((state, budget, budget.unit == "tokens"))
        if len(self._bound) >= 65_536:
            self._bound.clear()
        bound = self._bound[id(plan)] = _Bound(plan, limits, slots, tokens, budgets)
        return bound

    def _check_limits(self, bound: _Bound, tokens: int, now: int) -> Admission | None:
        for kind, counter, rule in bound.limits:
            if kind == _CONCURRENCY:
                if counter.used >= rule.limit:
                    return Admission(False, "concurrency", rule.key)
                continue
            index = now // rule.window_ms
            used = counter.used if counter.index == index else 0
            if used + (tokens if kind == _TOKENS else 1) > rule.limit:
                return Admission(False, rule.kind, rule.key, (index + 1) * rule.window_ms - now)
        return None

    def _reserve_budgets(self, bound: _Bound, tokens: int, money: int, floors: Floors | None) -> Admission:
        """Check every budget, then reserve on all of them; the admission or the refusal."""
        takes: list[int] = []
        for state, budget, tokens_unit in bound.budgets:
            take = tokens if tokens_unit else money
            if budget.hard:
                used = state.spent + state.reserved
                if used + take > budget.limit:
                    room = budget.limit - used
                    if floors is None or room < floors[0 if tokens_unit else 1]:
                        return Admission(False, "budget", budget.key)
                    take = room
            takes.append(take)
        remaining: list[int] = []
        soft_exceeded: list[str] = []
        for (state, budget, _), take in zip(bound.budgets, takes):
            state.reserved += take
            if state.expire_at is None and budget.period_end_ms is not None:
                self._set_expiry(budget.key, state, budget.expire_at_ms())
            used = state.spent + state.reserved
            remaining.append(budget.limit - used if used < budget.limit else 0)
            if not budget.hard and used > budget.limit:
                soft_exceeded.append(budget.key)
        return Admission(True, None, None, None, tuple(remaining), tuple(takes), tuple(soft_exceeded))

    def _held(self, bound: _Bound, record: _Record) -> Admission:
        """The admission of a live reservation, as it stands now."""
        if not bound.budgets:
            return _ALLOWED
        remaining: list[int] = []
        soft_exceeded: list[str] = []
        for state, budget, _ in bound.budgets:
            left, over = budget_view(budget, state.spent, state.reserved)
            remaining.append(left)
            if over:
                soft_exceeded.append(budget.key)
        held = record.takes if record.held else (0,) * len(bound.budgets)
        return Admission(True, None, None, None, tuple(remaining), held, tuple(soft_exceeded))

    # -- leases and expiry -----------------------------------------------------

    @staticmethod
    def _release(record: _Record) -> None:
        """Give back the slots and budget reservations a record holds."""
        record.held = False
        bound = record.bound
        for slots in bound.slots:
            slots.used -= 1
        for (state, _, _), take in zip(bound.budgets, record.takes):
            state.reserved -= take

    def _set_expiry(self, key: str, state: _Budget, expire_at: int | None) -> None:
        if expire_at is not None and expire_at != state.expire_at:
            state.expire_at = expire_at
            heapq.heappush(self._budget_heap, (expire_at, key))
            self._due = min(self._due, expire_at)

    def _purge(self, now: int) -> None:
        """End the leases that are over, forget expired records and budget counters past their period."""
        due: float = _NEVER
        records = self._records
        for request_id, record in list(records.items()):
            if record.held and record.lease_end <= now:
                self._release(record)  # its replica never settled: what it held comes back
            if record.expire_at <= now:
                del records[request_id]
            else:
                due = min(due, record.lease_end if record.held else record.expire_at)
        heap = self._budget_heap
        dropped = False
        while heap and heap[0][0] <= now:
            expire_at, key = heapq.heappop(heap)
            state = self._budgets.get(key)
            if state is not None and state.expire_at == expire_at:
                del self._budgets[key]
                dropped = True
        self._due = min(due, heap[0][0]) if heap else due
        if dropped:
            # Bound plans may hold a dropped counter: they bind anew when next used.
            for bound in self._bound.values():
                bound.stale = True
            self._bound.clear()
