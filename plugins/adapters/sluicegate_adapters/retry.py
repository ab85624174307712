"""When to try an SCM call again, and how long to wait first.

A wait the provider names (``Retry-After``, a rate-limit reset time) is slept
exactly; otherwise the wait is exponential backoff with full jitter
(``random() * min(cap, base * 2**n)``). A named wait longer than
``max_wait_s`` is not slept at all: the call ends in ``RateLimited`` carrying
the wait, so a task can be rescheduled instead of holding a worker for an hour.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    # the longest wait a provider may ask for that is slept rather than raised
    max_wait_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.base_delay_s, self.max_delay_s, self.max_wait_s) < 0:
            raise ValueError("delays and waits must not be negative")

    def backoff(self, attempt: int, rand: Callable[[], float]) -> float:
        """Full jitter after the ``attempt``-th failure (1-based)."""
        ceiling: float = min(self.max_delay_s, self.base_delay_s * 2.0 ** min(attempt - 1, 32))
        return rand() * ceiling


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


@dataclass(frozen=True, slots=True)
class Clock:
    """Wall time, sleeping and randomness, passed in so tests can control them."""

    now: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = field(default=_sleep)
    random: Callable[[], float] = random.random


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def seconds_until_epoch(value: str | None, now: float) -> float | None:
    """A reset header holding epoch seconds (GitHub, GitLab, Azure DevOps) as seconds from ``now``."""
    if not value:
        return None
    try:
        at = float(value)
    except ValueError:
        return None
    if math.isnan(at) or math.isinf(at):
        return None
    return max(0.0, at - now)
