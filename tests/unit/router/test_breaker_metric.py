"""The breaker-state gauge follows each deployment's breaker, read when Prometheus scrapes."""

from __future__ import annotations

import msgspec

from core.config import Config
from router.gateway import Gateway


def _config() -> Config:
    deployment = {"name": "up", "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
    other = {**deployment, "name": "down"}
    models = [{"alias": "a", "deployments": ["up", "down"]}]
    return msgspec.convert({"deployments": [deployment, other], "models": models}, Config)


def test_an_open_breaker_reads_one_and_a_closed_one_zero() -> None:
    gateway = Gateway(_config())
    text = gateway.metrics.render().decode()
    assert 'sluicegate_breaker_open{deployment="up"} 0.0' in text and 'sluicegate_breaker_open{deployment="down"} 0.0' in text
    gateway.deployments["down"].breaker.force_open()
    text = gateway.metrics.render().decode()
    assert 'sluicegate_breaker_open{deployment="down"} 1.0' in text and 'sluicegate_breaker_open{deployment="up"} 0.0' in text
