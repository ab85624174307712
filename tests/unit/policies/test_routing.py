from __future__ import annotations

import random
from collections import Counter

import msgspec
import pytest

from core.config import DeploymentConfig, ModelConfig
from core.errors import ModelNotFound
from policies.routing import Alias, Deployment, RouteHint, Router
from serving.base import Load


class StubEngine:
    """Only load() matters to routing."""

    def __init__(self, running: int = 0) -> None:
        self.running = running

    def load(self) -> Load:
        return Load(running=self.running)


def _dep(name: str, running: int = 0) -> Deployment:
    config = msgspec.convert({"name": name, "provider": "openai", "model": "m"}, DeploymentConfig)
    return Deployment(config=config, engine=StubEngine(running))  # type: ignore[arg-type]


def _router(tiers: list[list[Deployment]], balance: str = "least_outstanding") -> Router:
    config = ModelConfig(alias="m", deployments=[[d.name for d in t] for t in tiers], balance=balance)  # type: ignore[arg-type]
    return Router([Alias(config=config, tiers=tiers)], rng=random.Random(7))


def test_unknown_alias() -> None:
    with pytest.raises(ModelNotFound):
        _router([[_dep("a")]]).plan("nope")


def test_tiers_are_fallback_order_and_pools_least_outstanding() -> None:
    busy, idle, backup = _dep("busy", 5), _dep("idle", 1), _dep("backup")
    plan = _router([[busy, idle], [backup]]).plan("m").deployments
    assert [d.name for d in plan] == ["idle", "busy", "backup"]


def test_ties_are_spread() -> None:
    a, b = _dep("a"), _dep("b")
    router = _router([[a, b]])
    firsts = Counter(router.plan("m").deployments[0].name for _ in range(200))
    assert firsts["a"] > 50 and firsts["b"] > 50


def test_open_circuit_is_skipped() -> None:
    a, b = _dep("a"), _dep("b")
    a.breaker.force_open()
    assert [d.name for d in _router([[a], [b]]).plan("m").deployments] == ["b"]


def test_affinity_by_session_and_prefix() -> None:
    replicas = [_dep(f"r{i}") for i in range(4)]
    router = _router([replicas], balance="affinity")
    picks = {router.plan("m", RouteHint(session_id="user-42")).deployments[0].name for _ in range(20)}
    assert len(picks) == 1
    system = {"role": "system", "content": "You are a helpful assistant for ACME. " * 20}
    first = {
        router.plan("m", RouteHint(body={"messages": [system, {"role": "user", "content": f"question {i}"}]})).deployments[0].name
        for i in range(20)
    }
    assert len(first) == 1  # a shared long system prompt keeps requests together
    spread = {router.plan("m", RouteHint(session_id=f"s{i}")).deployments[0].name for i in range(40)}
    assert len(spread) > 1  # different sessions do not all land on one replica
