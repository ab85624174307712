from __future__ import annotations

import random

from serving.health import BreakerSettings, CircuitBreaker, LatencyTracker, State
from serving.retry import RetryPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_then_the_probe_decides() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=3, open_s=10), clock)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.available()
    breaker.record_failure()
    assert breaker.state is State.OPEN
    assert not breaker.available() and not breaker.would_allow()
    clock.now += 10
    # Due for a probe: planned, but no request goes until the probe says "up".
    assert breaker.would_allow() and not breaker.available()
    assert breaker.claim_probe()
    assert not breaker.claim_probe()  # one probe at a time
    assert not breaker.would_allow()
    breaker.probe_result(True)
    assert breaker.state is State.HALF_OPEN and breaker.available()
    breaker.record_success()
    assert breaker.state is State.CLOSED and breaker.available()


def test_failed_probe_reopens() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=1, open_s=5), clock)
    breaker.record_failure()
    clock.now += 5
    assert breaker.claim_probe()
    breaker.probe_result(False)
    assert breaker.state is State.OPEN
    clock.now += 4
    assert not breaker.would_allow() and not breaker.claim_probe()
    clock.now += 1
    assert breaker.claim_probe()


def test_abandoned_probe_leaves_it_due() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=1, open_s=5), clock)
    breaker.record_failure()
    clock.now += 5
    assert breaker.claim_probe()
    breaker.probe_result(None)
    assert breaker.state is State.OPEN and breaker.claim_probe()


def test_on_probation_a_down_failure_reopens_a_suspect_one_does_not() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=3, open_s=5), clock)
    breaker.force_open()
    clock.now += 5
    assert breaker.claim_probe()
    breaker.probe_result(True)
    breaker.record_suspect("hostile")
    assert breaker.state is State.HALF_OPEN and breaker.available()
    breaker.record_failure()
    assert breaker.state is State.OPEN


def test_one_tenant_cannot_open_the_breaker_with_its_own_failures() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=3, min_requests=4, window_s=30), clock)
    for _ in range(50):
        breaker.record_suspect("hostile")
    assert breaker.state is State.CLOSED
    # The same failure seen by other tenants says more than one request's doing.
    breaker.record_suspect("b")
    breaker.record_suspect("c")
    assert breaker.state is State.OPEN


def test_a_tenant_counts_again_once_its_last_suspect_left_the_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=3, min_requests=100, window_s=30), clock)
    breaker.record_suspect("a")
    clock.now += 31
    breaker.record_suspect("a")
    breaker.record_suspect("b")
    assert breaker.state is State.OPEN


def test_a_single_suspect_never_opens_even_at_a_threshold_of_one() -> None:
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=1), Clock())
    breaker.record_suspect("a")
    assert breaker.state is State.CLOSED
    breaker.record_suspect("b")
    assert breaker.state is State.OPEN


def test_suspects_do_not_fill_the_error_rate_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=100, error_rate=0.5, min_requests=4), clock)
    for _ in range(20):
        breaker.record_suspect("hostile")
        breaker.record_success()
    assert breaker.state is State.CLOSED


def test_late_failures_do_not_extend_the_open_period() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=1, open_s=5), clock)
    breaker.record_failure()
    clock.now += 4
    breaker.record_failure()  # a request sent before the breaker opened
    clock.now += 1
    assert breaker.probe_due()


def test_error_rate_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=100, error_rate=0.5, min_requests=10, window_s=30), clock)
    for i in range(10):
        (breaker.record_failure if i % 2 else breaker.record_success)()
    assert breaker.state is State.OPEN


def test_old_outcomes_leave_the_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=100, error_rate=0.5, min_requests=4, window_s=30), clock)
    for _ in range(2):
        breaker.record_success()
        breaker.record_success()
        breaker.record_failure()
    clock.now += 31
    # 4 failures in 8 would open it, were the first six still in the window.
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is State.CLOSED


def test_failures_that_leave_the_window_no_longer_count_towards_the_rate() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(consecutive_failures=100, error_rate=0.5, min_requests=4, window_s=30), clock)
    for window in range(3):  # a quarter of each window fails, again and again
        clock.now += 31 if window else 0
        breaker.record_failure()
        for _ in range(3):
            breaker.record_success()
        assert breaker.state is State.CLOSED
    breaker.record_failure()  # two in five
    assert breaker.state is State.CLOSED
    breaker.record_failure()  # half of the window: it opens
    assert breaker.state is State.OPEN


def test_cool_down_for_retry_after() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock=clock)
    breaker.cool_down(2)
    assert not breaker.available() and not breaker.would_allow()
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
