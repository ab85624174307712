"""Which deployment serves, and why, across price, privacy, region, health and policy."""

from __future__ import annotations

import random

import msgspec
import pytest

from core.config import DeploymentConfig, ModelConfig, RoutingPolicy
from policies.routing import Alias, Deployment, Router
from serving.base import Load
from serving.health import BreakerSettings, CircuitBreaker


class StubEngine:
    def load(self) -> Load:
        return Load()


def dep(name: str, price: int, privacy: str = "cloud", region: str = "us", healthy: bool = True) -> Deployment:
    config = msgspec.convert(
        {"name": name, "provider": "openai", "model": "m", "privacy": privacy, "region": region,
         "price": {"input_per_mtok": price, "output_per_mtok": price}},
        DeploymentConfig,
    )
    # An hour-long open state: the circuit must not half-open while the suite runs.
    breaker = CircuitBreaker(BreakerSettings(open_s=3600))
    d = Deployment(config=config, engine=StubEngine(), breaker=breaker)  # type: ignore[arg-type]
    if not healthy:
        d.breaker.force_open()
    return d


def router(*deployments: Deployment) -> Router:
    config = ModelConfig(alias="m", deployments=[d.name for d in deployments])
    return Router([Alias(config=config, tiers=[[d] for d in deployments])], rng=random.Random(3))


CLOUD_EU = dep("cloud-eu", 300, region="eu")
CLOUD_US_CHEAP = dep("cloud-us-cheap", 100)
LOCAL = dep("local-gpu", 200, privacy="self_hosted", region="eu")
CLOUD_US_DOWN = dep("cloud-us-down", 50, healthy=False)
ALL = (CLOUD_EU, CLOUD_US_CHEAP, LOCAL, CLOUD_US_DOWN)


# Filters apply in order (privacy, region, allow-list, health); each deployment is counted once.
@pytest.mark.parametrize(
    ("policy", "private", "first", "reason"),
    [
        (RoutingPolicy(), False, "cloud-eu", "pinned:cloud-eu,-unhealthy=1"),
        (RoutingPolicy(strategy="cheapest"), False, "cloud-us-cheap", "cheapest:cloud-us-cheap,-unhealthy=1"),
        (RoutingPolicy(strategy="cheapest"), True, "local-gpu", "cheapest:local-gpu,self_hosted_only,-privacy=3"),
        (RoutingPolicy(strategy="cheapest", self_hosted_only=True), False, "local-gpu", "cheapest:local-gpu,self_hosted_only,-privacy=3"),
        (RoutingPolicy(strategy="cheapest", regions=["eu"]), False, "local-gpu", "cheapest:local-gpu,-region=2"),
        (RoutingPolicy(strategy="cheapest", allowed_deployments=["cloud-eu"]), False, "cloud-eu", "cheapest:cloud-eu,-not_allowed=3"),
        (RoutingPolicy(strategy="pinned", regions=["eu"]), True, "local-gpu", "pinned:local-gpu,self_hosted_only,-privacy=3"),
    ],
)
def test_matrix(policy: RoutingPolicy, private: bool, first: str, reason: str) -> None:
    plan = router(*ALL).plan("m", policy=policy, self_hosted_only=private)
    assert plan.deployments[0].name == first
    assert plan.reason == reason
    assert "cloud-us-down" not in [d.name for d in plan.deployments]


def test_cheapest_orders_every_candidate_by_price() -> None:
    plan = router(*ALL).plan("m", policy=RoutingPolicy(strategy="cheapest"))
    assert [d.name for d in plan.deployments] == ["cloud-us-cheap", "local-gpu", "cloud-eu"]


def test_lowest_latency_prefers_the_fastest_observed() -> None:
    slow, fast = dep("slow", 1), dep("fast", 9)
    for _ in range(20):
        slow.latency.observe(0.5)
        fast.latency.observe(0.05)
    plan = router(slow, fast).plan("m", policy=RoutingPolicy(strategy="lowest_latency"))
    assert [d.name for d in plan.deployments] == ["fast", "slow"]


def test_nothing_allowed_leaves_an_empty_plan_with_the_reason() -> None:
    plan = router(CLOUD_EU, CLOUD_US_CHEAP).plan("m", self_hosted_only=True)
    assert plan.deployments == [] and plan.removed == {"privacy": 2}
    assert plan.reason == "pinned:none,self_hosted_only,-privacy=2"
