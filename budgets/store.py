"""The atomic counter store behind rate limits, concurrency slots and budgets.

Admission is two phases. ``admit`` checks every limit and budget of a request
and reserves all of them in one atomic step, or reserves nothing. ``settle``
turns the reservation into actual usage: token windows are corrected, budget
reservations are released and the actual amount is charged. Each reservation
is a lease: if the replica holding it dies, the next admit or settle touching
the same keys reclaims it once the lease has expired.

Money is an integer (pico-USD in this project); no amount is ever a float.

Two implementations share this contract: ``MemoryCounterStore`` (one process)
and ``RedisCounterStore`` (many replicas sharing Redis, one round trip per
phase). ``tests/contract`` runs the same assertions against both.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import msgspec

LimitKind = Literal["requests", "tokens", "concurrency"]
LIMIT_KINDS: frozenset[str] = frozenset(("requests", "tokens", "concurrency"))

# Redis integers are signed 64-bit; every amount must fit so sums stay exact.
MAX_AMOUNT = 2**63 - 1
# Budget counters outlive their period so late settlements still land.
BUDGET_KEY_GRACE_MS = 7 * 24 * 3600 * 1000
# A settle arriving this long after its lease expired still charges the actual
# usage (the work was done); after that the reservation record is gone.
RECORD_GRACE_MS = 60_000


class StoreUnavailable(Exception):
    """The shared store cannot be reached; callers choose fail-open or fail-closed."""


def _check_amount(name: str, value: int) -> None:
    if not 0 <= value <= MAX_AMOUNT:
        raise ValueError(f"{name} must be between 0 and 2**63-1")


class Limit(msgspec.Struct, frozen=True):
    """A rate or concurrency limit.

    ``requests``/``tokens`` count ``amount`` into a fixed window aligned to
    ``window_ms`` (for tokens, ``amount`` is the estimate corrected at settle).
    ``concurrency`` holds one slot per request until settle or lease expiry;
    ``amount`` is ignored there.
    """

    key: str
    kind: LimitKind
    limit: int
    amount: int
    window_ms: int = 60_000

    def __post_init__(self) -> None:
        if self.kind not in LIMIT_KINDS:
            raise ValueError(f"unknown limit kind {self.kind!r}")
        _check_amount("limit", self.limit)
        _check_amount("amount", self.amount)
        if self.window_ms <= 0:
            raise ValueError("window_ms must be positive")


class Budget(msgspec.Struct, frozen=True):
    """A spend limit; ``key`` already names the period (e.g. ``...:month:2026-11``).

    Hard budgets refuse when spent + reserved + amount would exceed ``limit``;
    soft budgets always allow and report being over. A hard budget with
    ``min_amount`` is flexible: it reserves as much of ``amount`` as remains and
    refuses only when less than ``min_amount`` remains (``Decision.reserved``
    says how much was taken).
    """

    key: str
    limit: int
    amount: int
    hard: bool = True
    period_end_ms: int | None = None
    min_amount: int | None = None

    def __post_init__(self) -> None:
        _check_amount("limit", self.limit)
        _check_amount("amount", self.amount)
        if self.min_amount is not None:
            _check_amount("min_amount", self.min_amount)
            if self.min_amount > self.amount:
                raise ValueError("min_amount must not exceed amount")

    def expire_at_ms(self) -> int | None:
        """When the counter may be dropped: some time after its period ends."""
        if self.period_end_ms is None:
            return None
        return self.period_end_ms + BUDGET_KEY_GRACE_MS


class AdmitRequest(msgspec.Struct, frozen=True):
    """Everything one request must pass. ``now_ms`` overrides the store's clock
    (tests and replays); production leaves it unset so Redis uses its own TIME."""

    request_id: str
    limits: list[Limit]
    budgets: list[Budget]
    lease_ms: int
    now_ms: int | None = None

    def __post_init__(self) -> None:
        if not self.request_id:
            raise ValueError("request_id must not be empty")
        if self.lease_ms <= 0:
            raise ValueError("lease_ms must be positive")
        # One reservation per key: a repeated key would be held twice under one id.
        limit_keys = [(limit.kind, limit.key) for limit in self.limits]
        if len(set(limit_keys)) != len(limit_keys):
            raise ValueError("a limit key appears twice in one request")
        budget_keys = [budget.key for budget in self.budgets]
        if len(set(budget_keys)) != len(budget_keys):
            raise ValueError("a budget key appears twice in one request")


class Decision(msgspec.Struct, frozen=True):
    """The outcome of ``admit``. On refusal ``reason`` is ``requests``,
    ``tokens``, ``concurrency`` or ``budget`` and ``key`` names what failed."""

    allowed: bool
    reason: str | None = None
    key: str | None = None
    retry_after_ms: int | None = None
    soft_exceeded: list[str] = []
    remaining: dict[str, int] = {}
    # What this request holds on each budget (less than asked when flexible).
    reserved: dict[str, int] = {}


class Settlement(msgspec.Struct, frozen=True):
    """Actual usage of an admitted request.

    ``actual_tokens`` maps a tokens-limit key to the tokens used (the window
    gets ``actual - estimate``); ``actual_budget`` maps a budget key to the
    amount to charge, which may exceed the reservation. Keys the request did
    not reserve are ignored; a missing key counts as zero.
    """

    request_id: str
    actual_tokens: dict[str, int] = {}
    actual_budget: dict[str, int] = {}

    def __post_init__(self) -> None:
        for value in self.actual_tokens.values():
            _check_amount("actual tokens", value)
        for value in self.actual_budget.values():
            _check_amount("actual amount", value)


def budget_view(budget: Budget, spent: int, reserved: int) -> tuple[int, bool]:
    """(remaining, over soft limit) once this request's reservation is counted."""
    used = spent + reserved
    return max(0, budget.limit - used), (not budget.hard and used > budget.limit)


@runtime_checkable
class CounterStore(Protocol):
    async def admit(self, request: AdmitRequest) -> Decision:
        """Check and reserve every limit and budget atomically (all or nothing).

        Admitting an id that already holds a live reservation reserves nothing
        more and reports it allowed, so a retried admit is safe."""
        ...

    async def settle(self, settlement: Settlement) -> None:
        """Charge actual usage and release the reservation; idempotent."""
        ...

    async def release(self, request_id: str) -> None:
        """Settle with zero usage (the request failed before any work was done)."""
        ...

    async def budget_state(self, key: str) -> tuple[int, int]:
        """(spent, reserved) of a budget key."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
