"""In-process counter store for the embedded (single replica) mode.

Every method runs to completion without awaiting, so on one event loop each
admit and settle is atomic without a lock. Expired leases, records and budget
counters are dropped lazily with heaps, the same way Redis drops expired keys.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from budgets.store import (
    RECORD_GRACE_MS,
    AdmitRequest,
    Budget,
    Decision,
    Limit,
    Settlement,
    budget_view,
)


# What an admit with no budgets answers (nothing in it is ever modified).
_ALLOWED = Decision(allowed=True)


def _epoch_ms() -> int:
    # Epoch time, not monotonic: windows align to the same boundaries as in Redis.
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _Leases:
    """Request ids holding something, each until an expiry (ms)."""

    until: dict[str, int] = field(default_factory=dict)
    heap: list[tuple[int, str]] = field(default_factory=list)

    def add(self, request_id: str, expiry: int) -> None:
        self.until[request_id] = expiry
        heapq.heappush(self.heap, (expiry, request_id))
        # Settled ids leave stale entries behind; rebuild before they dominate.
        if len(self.heap) > 2 * len(self.until) + 64:
            self.heap = [(until, held_by) for held_by, until in self.until.items()]
            heapq.heapify(self.heap)

    def expired(self, now: int) -> list[str]:
        """Remove and return the ids whose lease ended at or before ``now``."""
        gone: list[str] = []
        while self.heap and self.heap[0][0] <= now:
            expiry, request_id = heapq.heappop(self.heap)
            # Heap entries of settled ids are stale; only a matching expiry counts.
            if self.until.get(request_id) == expiry:
                del self.until[request_id]
                gone.append(request_id)
        return gone


@dataclass(slots=True)
class _Budget:
    spent: int = 0
    reserved: int = 0
    holds: dict[str, int] = field(default_factory=dict)
    leases: _Leases = field(default_factory=_Leases)
    expire_at: int | None = None


@dataclass(slots=True)
class _Window:
    index: int
    used: int = 0


@dataclass(slots=True)
class _Record:
    expire_at: int
    concurrency: list[str]
    tokens: list[tuple[str, int, int]]  # limit key, window index, estimate
    budgets: list[tuple[str, int | None]]  # budget key, counter expiry


class MemoryCounterStore:
    def __init__(self, clock: Callable[[], int] | None = None) -> None:
        self._clock = clock or _epoch_ms
        self._windows: dict[tuple[str, str], _Window] = {}
        self._slots: dict[str, _Leases] = {}
        self._budgets: dict[str, _Budget] = {}
        self._records: dict[str, _Record] = {}
        self._record_heap: list[tuple[int, str]] = []
        self._budget_heap: list[tuple[int, str]] = []

    async def admit(self, request: AdmitRequest) -> Decision:
        return self.admit_now(request)

    async def settle(self, settlement: Settlement) -> None:
        self.settle_now(settlement)

    # The synchronous forms: callers on the event loop may skip the await (and,
    # for settle, the task a store with I/O would need).

    def admit_now(self, request: AdmitRequest) -> Decision:
        now = request.now_ms if request.now_ms is not None else self._clock()
        self._purge(now)
        record = self._records.get(request.request_id)
        if record is None or record.expire_at <= now:
            refusal = self._check_limits(request.limits, now)
            takes = self._check_budgets(request.budgets, now) if refusal is None else None
            if refusal is not None:
                return refusal
            if isinstance(takes, Decision):
                return takes
            self._reserve(request, now, takes or [])
        return self._allowed(request.budgets, request.request_id)

    def settle_now(self, settlement: Settlement) -> None:
        now = self._clock()
        self._purge(now)
        record = self._records.pop(settlement.request_id, None)
        if record is None or record.expire_at <= now:
            return
        request_id = settlement.request_id
        for key in record.concurrency:
            self._slot_count(key, now, release=request_id)
        for key, index, estimate in record.tokens:
            window = self._windows.get(("tokens", key))
            # Corrections only matter inside the window the estimate went into.
            if window is not None and window.index == index:
                window.used += settlement.actual_tokens.get(key, 0) - estimate
        for key, expire_at in record.budgets:
            self._settle_budget(key, expire_at, request_id, settlement.actual_budget.get(key, 0), now)

    async def release(self, request_id: str) -> None:
        await self.settle(Settlement(request_id=request_id))

    async def budget_state(self, key: str) -> tuple[int, int]:
        state = self._budgets.get(key)
        if state is None or (state.expire_at is not None and state.expire_at <= self._clock()):
            return 0, 0
        return state.spent, state.reserved

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    # -- admit helpers ---------------------------------------------------------

    def _check_limits(self, limits: list[Limit], now: int) -> Decision | None:
        for limit in limits:
            if limit.kind == "concurrency":
                slots = self._slots.get(limit.key)
                if slots is not None and len(slots.until) + 1 > limit.limit and self._slot_count(limit.key, now) + 1 > limit.limit:
                    return Decision(allowed=False, reason="concurrency", key=limit.key)
                continue
            index = now // limit.window_ms
            window = self._windows.get((limit.kind, limit.key))
            used = window.used if window is not None and window.index == index else 0
            if used + limit.amount > limit.limit:
                retry_after = (index + 1) * limit.window_ms - now
                return Decision(allowed=False, reason=limit.kind, key=limit.key, retry_after_ms=retry_after)
        return None

    def _check_budgets(self, budgets: list[Budget], now: int) -> Decision | list[int]:
        """A refusal, or the amount to take from each budget (less than asked when flexible)."""
        takes: list[int] = []
        for budget in budgets:
            state = self._reclaimed_budget(budget.key, now)
            used = state.spent + state.reserved if state is not None else 0
            take = budget.amount
            if budget.hard and used + budget.amount > budget.limit:
                room = budget.limit - used
                if budget.min_amount is None or room < budget.min_amount:
                    return Decision(allowed=False, reason="budget", key=budget.key)
                take = room
            takes.append(take)
        return takes

    def _reserve(self, request: AdmitRequest, now: int, takes: list[int]) -> None:
        request_id = request.request_id
        expiry = now + request.lease_ms
        record = _Record(expiry + RECORD_GRACE_MS, [], [], [])
        for limit in request.limits:
            if limit.kind == "concurrency":
                slots = self._slots.get(limit.key)
                if slots is None:
                    slots = self._slots[limit.key] = _Leases()
                slots.add(request_id, expiry)
                record.concurrency.append(limit.key)
                continue
            index = now // limit.window_ms
            window = self._windows.get((limit.kind, limit.key))
            if window is None or window.index != index:
                window = self._windows[(limit.kind, limit.key)] = _Window(index)
            window.used += limit.amount
            if limit.kind == "tokens":
                record.tokens.append((limit.key, index, limit.amount))
        for budget, take in zip(request.budgets, takes):
            state = self._budget(budget.key)
            state.reserved += take
            state.holds[request_id] = take
            state.leases.add(request_id, expiry)
            expire_at = budget.expire_at_ms()
            self._set_expiry(budget.key, state, expire_at)
            record.budgets.append((budget.key, expire_at))
        self._records[request_id] = record
        heapq.heappush(self._record_heap, (record.expire_at, request_id))
        if len(self._record_heap) > 2 * len(self._records) + 64:
            self._record_heap = [(held.expire_at, held_id) for held_id, held in self._records.items()]
            heapq.heapify(self._record_heap)

    def _allowed(self, budgets: list[Budget], request_id: str) -> Decision:
        if not budgets:
            return _ALLOWED
        soft_exceeded: list[str] = []
        remaining: dict[str, int] = {}
        held: dict[str, int] = {}
        for budget in budgets:
            state = self._budget(budget.key)
            remaining[budget.key], over = budget_view(budget, state.spent, state.reserved)
            held[budget.key] = state.holds.get(request_id, 0)
            if over:
                soft_exceeded.append(budget.key)
        return Decision(allowed=True, soft_exceeded=soft_exceeded, remaining=remaining, reserved=held)

    # -- shared state helpers --------------------------------------------------

    def _settle_budget(self, key: str, expire_at: int | None, request_id: str, actual: int, now: int) -> None:
        state = self._reclaimed_budget(key, now)
        if state is not None:
            held = state.holds.pop(request_id, None)
            if held is not None:
                state.leases.until.pop(request_id, None)
                state.reserved -= held
        if actual:
            # A counter that expired meanwhile starts again, as HINCRBY would.
            state = state or self._budget(key)
            state.spent += actual
            self._set_expiry(key, state, expire_at)

    def _slot_count(self, key: str, now: int, release: str | None = None) -> int:
        """Slots held on ``key`` after reclaiming expired leases (and freeing ``release``)."""
        slots = self._slots.get(key)
        if slots is None:
            return 0
        if slots.heap and slots.heap[0][0] <= now:
            slots.expired(now)
        if release is not None:
            slots.until.pop(release, None)
        # An empty entry stays (one per tenant or key): the next request reuses it.
        return len(slots.until)

    def _reclaimed_budget(self, key: str, now: int) -> _Budget | None:
        state = self._budgets.get(key)
        if state is not None:
            for request_id in state.leases.expired(now):
                state.reserved -= state.holds.pop(request_id, 0)
        return state

    def _budget(self, key: str) -> _Budget:
        state = self._budgets.get(key)
        if state is None:
            state = self._budgets[key] = _Budget()
        return state

    def _set_expiry(self, key: str, state: _Budget, expire_at: int | None) -> None:
        if expire_at is not None and expire_at != state.expire_at:
            state.expire_at = expire_at
            heapq.heappush(self._budget_heap, (expire_at, key))

    def _purge(self, now: int) -> None:
        """Forget records and budget counters past their expiry."""
        while self._record_heap and self._record_heap[0][0] <= now:
            expire_at, request_id = heapq.heappop(self._record_heap)
            record = self._records.get(request_id)
            if record is not None and record.expire_at == expire_at:
                del self._records[request_id]
        while self._budget_heap and self._budget_heap[0][0] <= now:
            expire_at, key = heapq.heappop(self._budget_heap)
            state = self._budgets.get(key)
            if state is not None and state.expire_at == expire_at:
                del self._budgets[key]
