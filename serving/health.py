"""Per-deployment health: a passive circuit breaker and an observed-latency tracker.

The breaker opens on consecutive failures or on an error rate over a sliding
window, stays open for a cool-down, then lets exactly one probe through
(half-open); a successful probe closes it, a failed one opens it again. A 429
does not count as a failure: it puts the deployment in a cool-down for as long
as its ``Retry-After`` says.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class State(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True, frozen=True)
class BreakerSettings:
    consecutive_failures: int = 5
    error_rate: float = 0.5
    window_s: float = 30.0
    min_requests: int = 20
    open_s: float = 15.0


class CircuitBreaker:
    def __init__(self, settings: BreakerSettings | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or BreakerSettings()
        self._clock = clock
        self.state = State.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._cooldown_until = 0.0
        # (time, failed) outcomes inside the window
        self._outcomes: deque[tuple[float, bool]] = deque()

    def available(self) -> bool:
        """May routing send a request here now? Claims the probe slot when half-open."""
        now = self._clock()
        if now < self._cooldown_until:
            return False
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            if now - self._opened_at < self.settings.open_s:
                return False
            self.state = State.HALF_OPEN
            self._probe_in_flight = False
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def would_allow(self) -> bool:
        """Like ``available`` without claiming anything: for reporting and filtering."""
        now = self._clock()
        if now < self._cooldown_until:
            return False
        if self.state is State.OPEN:
            return now - self._opened_at >= self.settings.open_s
        return not (self.state is State.HALF_OPEN and self._probe_in_flight)

    def cooldown_remaining(self) -> float:
        return max(0.0, self._cooldown_until - self._clock())

    def record_success(self) -> None:
        self._consecutive = 0
        self._remember(False)
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self._probe_in_flight = False
            self._outcomes.clear()

    def record_failure(self) -> None:
        self._consecutive += 1
        self._remember(True)
        if self.state is State.HALF_OPEN or self._should_open():
            self._open()

    def cool_down(self, seconds: float) -> None:
        """Rate limited upstream: skip it until its Retry-After has passed."""
        self._cooldown_until = max(self._cooldown_until, self._clock() + seconds)
        if self.state is State.HALF_OPEN:
            self._probe_in_flight = False

    def force_open(self) -> None:
        self._open()

    def _open(self) -> None:
        self.state = State.OPEN
        self._opened_at = self._clock()
        self._probe_in_flight = False
        self._consecutive = 0

    def _remember(self, failed: bool) -> None:
        now = self._clock()
        self._outcomes.append((now, failed))
        horizon = now - self.settings.window_s
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._outcomes.popleft()

    def _should_open(self) -> bool:
        s = self.settings
        if self._consecutive >= s.consecutive_failures:
            return True
        total = len(self._outcomes)
        if total < s.min_requests:
            return False
        failures = sum(1 for _, failed in self._outcomes if failed)
        return failures / total >= s.error_rate


class LatencyTracker:
    """A moving p95 of recent request latencies (seconds), for latency-aware routing."""

    def __init__(self, size: int = 200) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._cached: float | None = None

    def observe(self, seconds: float) -> None:
        self._samples.append(seconds)
        self._cached = None

    def p95(self) -> float | None:
        if not self._samples:
            return None
        if self._cached is None:
            ordered = sorted(self._samples)
            self._cached = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        return self._cached
