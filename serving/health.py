"""Per-deployment health: a passive circuit breaker and an observed-latency tracker.

The breaker counts what shows the deployment is down for everyone (refused or
timed-out connections, 502/503/529, the gateway's credentials refused:
``record_failure``) as it comes. A failure a request may have caused by itself
(a 500 for that request, a body the upstream cannot stream, a read timeout, a
mid-stream error: ``record_suspect``) counts once per tenant per window, and
opens the breaker only when more than one tenant saw such failures, so one
tenant's requests alone can never open the breaker for every tenant. The
caller counts a request once however often it is retried.

It opens on consecutive failures or on an error rate over a sliding window and
stays open for a cool-down. Then the engine's health probe, never a client
request, decides: "down" opens it again, "up" lets traffic back on probation
(half-open), where the next failure that shows the deployment down re-opens it
and the next success closes it. A 429 is not a failure: it puts the deployment
in a cool-down for as long as its ``Retry-After`` says.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from itertools import takewhile


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
        self._probing = False
        self._cooldown_until = 0.0
        # The outcomes inside the window: when each came and whether it failed, in two queues and not as a
        # pair, and the failures among them counted as they come and go. A busy deployment has a window of
        # a hundred thousand outcomes or more: no pair is allocated per request for the garbage collector
        # to go through, and a failure never sums the window.
        self._times: deque[float] = deque()
        self._failed: deque[bool] = deque()
        self._failures = 0
        # tenant --> when its last suspect failure counted, oldest first
        self._suspects: dict[str, float] = {}

    def available(self) -> bool:
        """May a request be sent here now: not open, not cooling down."""
        return self.state is not State.OPEN and self._clock() >= self._cooldown_until

    def probe_due(self) -> bool:
        """Open for its whole period, no probe out: the health probe should decide now."""
        now = self._clock()
        return (
            self.state is State.OPEN
            and not self._probing
            and now - self._opened_at >= self.settings.open_s
            and now >= self._cooldown_until
        )

    def would_allow(self) -> bool:
        """Worth planning a request here: it is available, or a probe may make it so. Claims nothing."""
        return self.available() or self.probe_due()

    def claim_probe(self) -> bool:
        """The caller runs the health probe now and reports with ``probe_result``; nobody else may."""
        if not self.probe_due():
            return False
        self._probing = True
        return True

    def probe_result(self, up: bool | None) -> None:
        """The claimed probe's answer; None: it was abandoned, and the next caller probes again."""
        self._probing = False
        if up is None or self.state is not State.OPEN:
            return
        if up:
            self.state = State.HALF_OPEN
            self._consecutive = 0
            self._forget_outcomes()
            self._suspects.clear()
        else:
            self._open()

    def cooldown_remaining(self) -> float:
        return max(0.0, self._cooldown_until - self._clock())

    def record_success(self) -> None:
        self._consecutive = 0
        self._remember(False)
        if self.state is State.HALF_OPEN:
            self.state = State.CLOSED

    def record_failure(self) -> None:
        """A failure that shows the deployment is down for every request."""
        if self.state is State.OPEN:
            return  # a request sent before it opened: the probe decides now
        self._count_failure()
        if self.state is State.HALF_OPEN or self._should_open():
            self._open()

    def record_suspect(self, tenant: str) -> None:
        """A failure the request may have caused by itself: counts once per tenant per window."""
        if self.state is State.OPEN:
            return
        now = self._clock()
        self._forget_suspects(now - self.settings.window_s)
        if tenant in self._suspects:
            return
        self._suspects[tenant] = now
        self._count_failure()
        # Whatever the thresholds, one tenant's requests alone never open it.
        if len(self._suspects) > 1 and self._should_open():
            self._open()

    def cool_down(self, seconds: float) -> None:
        """Rate limited upstream: skip it until its Retry-After has passed."""
        self._cooldown_until = max(self._cooldown_until, self._clock() + seconds)

    def force_open(self) -> None:
        """The health probe says the upstream is down."""
        self._open()

    def _open(self) -> None:
        self.state = State.OPEN
        self._opened_at = self._clock()
        self._consecutive = 0

    def _forget_suspects(self, horizon: float) -> None:
        # Entries are never updated in place, so insertion order is time order.
        stale = [tenant for tenant, _ in takewhile(lambda item: item[1] < horizon, self._suspects.items())]
        for tenant in stale:
            del self._suspects[tenant]

    def _count_failure(self) -> None:
        self._consecutive += 1
        self._remember(True)

    def _remember(self, failed: bool) -> None:
        now = self._clock()
        times = self._times
        times.append(now)
        self._failed.append(failed)
        self._failures += failed
        horizon = now - self.settings.window_s
        while times and times[0] < horizon:
            times.popleft()
            self._failures -= self._failed.popleft()

    def _forget_outcomes(self) -> None:
        self._times.clear()
        self._failed.clear()
        self._failures = 0

    def _should_open(self) -> bool:
        s = self.settings
        if self._consecutive >= s.consecutive_failures:
            return True
        total = len(self._times)
        if total < s.min_requests:
            return False
        return self._failures / total >= s.error_rate


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
