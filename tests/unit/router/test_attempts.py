"""Breaker accounting in the attempt loop: once per request, by tenant, recovered by the health probe."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
import pytest

from core.config import DeploymentConfig
from core.errors import (
    GatewayError,
    NoHealthyDeployment,
    UpstreamConnectError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from policies.routing import Deployment
from router.attempts import attempt
from router.metrics import Metrics
from serving.base import Load
from serving.health import BreakerSettings, CircuitBreaker, State
from serving.retry import RetryPolicy

RETRY = RetryPolicy(max_attempts=3, backoff_base_s=0, backoff_max_s=0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ProbedEngine:
    """Only what the attempt loop asks of an engine itself: its health probe."""

    name = "dep"
    provider = "fake"

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.probes = 0
        self.gate: asyncio.Event | None = None

    async def health(self) -> bool:
        self.probes += 1
        if self.gate is not None:
            await self.gate.wait()
        return self.up

    def load(self) -> Load:
        return Load()


def deployment(clock: Clock, engine: ProbedEngine | None = None, name: str = "dep", **settings: float) -> Deployment:
    config = msgspec.convert({"name": name, "provider": "openai", "model": "m"}, DeploymentConfig)
    breaker = CircuitBreaker(BreakerSettings(**settings), clock)  # type: ignore[arg-type]
    return Deployment(config=config, engine=engine or ProbedEngine(), breaker=breaker)  # type: ignore[arg-type]


def failing(error: Callable[[], GatewayError], calls: list[str]) -> Callable[[Deployment], object]:
    async def run(dep: Deployment) -> str:
        calls.append(dep.name)
        raise error()

    return run


async def succeed(dep: Deployment) -> str:
    return "ok"


async def test_a_request_retried_on_one_deployment_counts_once() -> None:
    dep = deployment(Clock(), consecutive_failures=3)
    calls: list[str] = []
    run = failing(lambda: UpstreamUnavailable("deployment dep answered 503"), calls)
    with pytest.raises(UpstreamUnavailable):
        await attempt([dep], run, RETRY, Metrics(), "m", "tenant-a")
    assert calls == ["dep", "dep", "dep"]
    assert dep.breaker.state is State.CLOSED
    # Two more requests seeing the deployment down: three in a row open it.
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            await attempt([dep], run, RETRY, Metrics(), "m", "tenant-a")
    assert dep.breaker.state is State.OPEN


async def test_one_tenants_failing_requests_leave_the_deployment_to_the_others() -> None:
    dep = deployment(Clock(), consecutive_failures=2)
    calls: list[str] = []
    for _ in range(5):
        with pytest.raises(UpstreamError):
            await attempt([dep], failing(lambda: UpstreamError("answered 500"), calls), RETRY, Metrics(), "m", "a")
    assert len(calls) == 15 and dep.breaker.state is State.CLOSED
    assert await attempt([dep], succeed, RETRY, Metrics(), "m", "b") == ("ok", dep)
    # The same failure for a second tenant is more than one request's doing.
    for tenant in ("c", "d"):
        with pytest.raises(UpstreamError):
            await attempt([dep], failing(lambda: UpstreamError("answered 500"), calls), RETRY, Metrics(), "m", tenant)
    assert dep.breaker.state is State.OPEN


async def test_an_unreachable_deployment_opens_whoever_asks_and_traffic_falls_back() -> None:
    clock = Clock()
    down = deployment(clock, ProbedEngine(up=False), consecutive_failures=2, open_s=10)
    other = deployment(clock, name="other")
    calls: list[str] = []

    async def run(dep: Deployment) -> str:
        calls.append(dep.name)
        if dep is down:
            raise UpstreamConnectError("deployment dep is unreachable")
        return "ok"

    for _ in range(2):
        assert (await attempt([down, other], run, RETRY, Metrics(), "m", "a"))[1] is other
    assert down.breaker.state is State.OPEN
    calls.clear()
    assert (await attempt([down, other], run, RETRY, Metrics(), "m", "a"))[1] is other
    assert calls == ["other"]
    # Alone, it fails fast; once due, its probe (still down) keeps it open without a request sent.
    with pytest.raises(NoHealthyDeployment):
        await attempt([down], run, RETRY, Metrics(), "m", "a")
    clock.now += 10
    with pytest.raises(NoHealthyDeployment):
        await attempt([down], run, RETRY, Metrics(), "m", "a")
    assert down.engine.probes == 1 and calls == ["other"]  # type: ignore[attr-defined]
    assert down.breaker.state is State.OPEN


async def test_the_health_probe_not_a_client_request_leaves_the_open_state() -> None:
    clock = Clock()
    engine = ProbedEngine()
    dep = deployment(clock, engine, consecutive_failures=1, open_s=10)
    dep.breaker.force_open()
    clock.now += 10
    hostile: list[str] = []
    # The first request after the open period fails by its own doing; it is not the probe.
    with pytest.raises(UpstreamError):
        await attempt([dep], failing(lambda: UpstreamError("answered 500"), hostile), RETRY, Metrics(), "m", "a")
    assert engine.probes == 1 and hostile
    assert dep.breaker.state is State.HALF_OPEN
    assert await attempt([dep], succeed, RETRY, Metrics(), "m", "b") == ("ok", dep)
    assert dep.breaker.state is State.CLOSED


async def test_one_probe_at_a_time_and_a_cancelled_one_is_retried() -> None:
    clock = Clock()
    engine = ProbedEngine()
    engine.gate = asyncio.Event()
    dep = deployment(clock, engine, consecutive_failures=1, open_s=10)
    dep.breaker.force_open()
    clock.now += 10
    first = asyncio.create_task(attempt([dep], succeed, RETRY, Metrics(), "m", "a"))
    await asyncio.sleep(0)
    assert engine.probes == 1
    # While the probe is out, others do not wait for it.
    with pytest.raises(NoHealthyDeployment):
        await attempt([dep], succeed, RETRY, Metrics(), "m", "b")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert dep.breaker.probe_due()
    engine.gate.set()
    assert await attempt([dep], succeed, RETRY, Metrics(), "m", "b") == ("ok", dep)
    assert engine.probes == 2


async def test_a_refusal_is_a_healthy_answer_and_a_rate_limit_cools_down() -> None:
    clock = Clock()
    dep = deployment(clock, consecutive_failures=2)
    calls: list[str] = []
    dep.breaker.record_failure()
    rejected = failing(lambda: UpstreamRejected("too long", status=400), calls)
    with pytest.raises(UpstreamRejected):
        await attempt([dep], rejected, RETRY, Metrics(), "m", "a")
    dep.breaker.record_failure()
    assert dep.breaker.state is State.CLOSED and calls == ["dep"]
    limited = failing(lambda: UpstreamRateLimited("slow down", retry_after=30), calls)
    with pytest.raises(UpstreamRateLimited):
        await attempt([dep], limited, RETRY, Metrics(), "m", "a")
    assert dep.breaker.cooldown_remaining() == 30 and dep.breaker.state is State.CLOSED
