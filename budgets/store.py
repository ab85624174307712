"""The atomic counter store behind rate limits, concurrency slots and budgets.

What a principal's requests touch is a ``Plan``, built once per principal.
Admission is then two phases. ``reserve`` checks every limit and budget of the
plan and reserves all of them in one atomic step, or reserves nothing; a
request is described by two numbers, its worst-case tokens and money.
``settle`` turns the reservation into actual usage: token windows are
corrected, budget reservations are released and the actual amount is charged.
Each reservation is a lease: if the replica holding it dies, the next call
touching the same keys reclaims it once the lease has expired.

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


Unit = Literal["tokens", "money"]
UNITS: frozenset[str] = frozenset(("tokens", "money"))


class LimitRule(msgspec.Struct, frozen=True):
    """A rate or concurrency limit.

    ``requests`` counts one per request and ``tokens`` a request's token
    estimate (corrected at settle) into a fixed window aligned to
    ``window_ms``; ``concurrency`` holds one slot per request until settle or
    lease expiry.
    """

    key: str
    kind: LimitKind
    limit: int
    window_ms: int = 60_000

    def __post_init__(self) -> None:
        if self.kind not in LIMIT_KINDS:
            raise ValueError(f"unknown limit kind {self.kind!r}")
        _check_amount("limit", self.limit)
        if self.window_ms <= 0:
            raise ValueError("window_ms must be positive")


class BudgetRule(msgspec.Struct, frozen=True):
    """A spend limit in ``tokens`` or ``money``; ``key`` already names the period (e.g. ``...:month:2026-11``).

    Hard budgets refuse when spent + reserved + amount would exceed ``limit``;
    soft budgets always allow and report being over.
    """

    key: str
    unit: Unit
    limit: int
    hard: bool = True
    period_end_ms: int | None = None

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unknown budget unit {self.unit!r}")
        _check_amount("limit", self.limit)

    def expire_at_ms(self) -> int | None:
        """When the counter may be dropped: some time after its period ends."""
        if self.period_end_ms is None:
            return None
        return self.period_end_ms + BUDGET_KEY_GRACE_MS


class Plan(msgspec.Struct, frozen=True):
    """Every limit and budget the requests of one principal touch, checked once and reused."""

    limits: tuple[LimitRule, ...] = ()
    budgets: tuple[BudgetRule, ...] = ()

    def __post_init__(self) -> None:
        # One reservation per key: a repeated key would be held twice under one id.
        limit_keys = [(limit.kind, limit.key) for limit in self.limits]
        if len(set(limit_keys)) != len(limit_keys):
            raise ValueError("a limit key appears twice in one plan")
        budget_keys = [budget.key for budget in self.budgets]
        if len(set(budget_keys)) != len(budget_keys):
            raise ValueError("a budget key appears twice in one plan")


# Floors of a flexible reservation: (tokens, money). Hard budgets then reserve
# as much of the amount as remains, refusing only when less than the floor of
# their unit remains (``Admission.held`` says how much was taken).
Floors = tuple[int, int]


def check_claim(request_id: str, tokens: int, money: int, lease_ms: int, floors: Floors | None) -> None:
    """What every ``reserve`` call must satisfy, whichever store serves it."""
    if not request_id:
        raise ValueError("request_id must not be empty")
    if lease_ms <= 0:
        raise ValueError("lease_ms must be positive")
    if not (0 <= tokens <= MAX_AMOUNT and 0 <= money <= MAX_AMOUNT):
        raise ValueError("amounts must be between 0 and 2**63-1")
    if floors is not None and not (0 <= floors[0] <= tokens and 0 <= floors[1] <= money):
        raise ValueError("floors must be between 0 and the amounts they bound")


def check_charge(tokens: int, money: int) -> None:
    if not (0 <= tokens <= MAX_AMOUNT and 0 <= money <= MAX_AMOUNT):
        raise ValueError("actual amounts must be between 0 and 2**63-1")


class Admission(msgspec.Struct, frozen=True):
    """The outcome of ``reserve``. On refusal ``reason`` is ``requests``,
    ``tokens``, ``concurrency`` or ``budget`` and ``key`` names what failed.
    When allowed, ``remaining`` and ``held`` follow the plan's budgets in order."""

    allowed: bool
    reason: str | None = None
    key: str | None = None
    retry_after_ms: int | None = None
    # What is left of each budget once this request's reservation counts.
    remaining: tuple[int, ...] = ()
    # What this request holds on each budget (less than asked when flexible).
    held: tuple[int, ...] = ()
    soft_exceeded: tuple[str, ...] = ()


def budget_view(budget: BudgetRule, spent: int, reserved: int) -> tuple[int, bool]:
    """(remaining, over soft limit) once this request's reservation is counted."""
    used = spent + reserved
    return max(0, budget.limit - used), (not budget.hard and used > budget.limit)


@runtime_checkable
class CounterStore(Protocol):
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
        """Check and reserve every limit and budget of ``plan`` atomically (all or nothing).

        Token limits and token budgets take ``tokens``, money budgets ``money``.
        ``now_ms`` overrides the store's clock (tests and replays); production
        leaves it unset so Redis uses its own TIME. Reserving an id that already
        holds a live reservation reserves nothing more and reports it allowed,
        so a retried call is safe."""
        ...

    async def settle(self, request_id: str, tokens: int = 0, money: int = 0) -> None:
        """Charge actual usage and release the reservation; idempotent.

        Token windows are corrected to ``tokens``; token budgets are charged
        ``tokens`` and money budgets ``money``, which may exceed what was
        reserved (the work was done). Settling with zeros releases everything."""
        ...

    async def budget_state(self, key: str) -> tuple[int, int]:
        """(spent, reserved) of a budget key."""
        ...

    async def claim_once(self, key: str, expire_at_ms: int | None) -> bool:
        """True for the first caller to claim ``key`` until ``expire_at_ms`` (None: for ever), False for all others.

        Atomic across every replica sharing the store: a budget alert goes out
        once per threshold and period. A claim whose expiry has passed is never
        granted; a retried call that had already won (a timed-out round trip)
        still answers True."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
