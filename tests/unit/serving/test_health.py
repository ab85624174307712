from __future__ import annotations

import random

from serving.health import BreakerSettings, CircuitBreaker, LatencyTracker, State
from serving.retry import RetryPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_then_half_open_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=3, open_s=10), clock)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.available()
    breaker.record_failure()
    assert breaker.state is State.OPEN
    assert not breaker.available()
    clock.now += 10
    assert breaker.available()  # the single probe
    assert breaker.state is State.HALF_OPEN
    assert not breaker.available()  # nobody else while the probe is out
    breaker.record_success()
    assert breaker.state is State.CLOSED and breaker.available()


def test_failed_probe_reopens() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=1, open_s=5), clock)
    breaker.record_failure()
    clock.now += 5
    assert breaker.available()
    breaker.record_failure()
    assert breaker.state is State.OPEN
    clock.now += 4
    assert not breaker.would_allow()


def test_error_rate_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=100, error_rate=0.5, min_requests=10, window_s=30), clock)
    for i in range(10):
        (breaker.record_failure if i % 2 else breaker.record_success)()
    assert breaker.state is State.OPEN


def test_old_outcomes_leave_the_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=100, error_rate=0.5, min_requests=4, window_s=30), clock)
    for _ in range(3):
        breaker.record_failure()
        breaker.record_success()
    clock.now += 31
    breaker.record_failure()
    assert breaker.state is State.CLOSED


def test_cool_down_for_retry_after() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock=clock)
    breaker.cool_down(2)
    assert not breaker.available()
    clock.now += 2
    assert breaker.available() and breaker.state is State.CLOSED


def test_retry_policy() -> None:
    policy = RetryPolicy(max_attempts=3, backoff_base_s=0.1, backoff_max_s=0.15, max_retry_after_s=5)
    rng = random.Random(1)
    assert 0 <= policy.delay(1, None, rng) <= 0.1
    assert 0 <= policy.delay(2, None, rng) <= 0.15
    assert policy.delay(3, None, rng) is None
    assert policy.delay(1, 2.0) == 2.0
    assert policy.delay(1, 30.0) is None


def test_latency_p95() -> None:
    tracker = LatencyTracker()
    assert tracker.p95() is None
    for i in range(100):
        tracker.observe(i / 100)
    assert tracker.p95() == 0.95
