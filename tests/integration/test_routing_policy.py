"""Routing policy through the gateway: cheapest allowed, privacy, budget-aware downgrade, recorded reason."""

from __future__ import annotations

from datetime import datetime, timezone

import aiohttp

from bench.fake_upstream import FakeUpstream
from router.auth import hash_api_key
from tests.conftest import make_config
from tests.integration.gateway_server import running_gateway

KEY = "sk-routing-0123456789"
CHAT = [{"role": "user", "content": "hello"}]


def _config(upstream: str, routing: dict, budgets: list | None = None):
    deployments = [
        {"name": "premium", "provider": "openai", "base_url": upstream, "model": "fake-model", "price": {"input_per_mtok": 5_000_000, "output_per_mtok": 15_000_000}},
        {"name": "budget-cloud", "provider": "openai", "base_url": upstream, "model": "fake-model", "price": {"input_per_mtok": 150_000, "output_per_mtok": 600_000}},
        {"name": "onprem", "provider": "openai_compatible", "base_url": upstream, "model": "fake-model", "privacy": "self_hosted", "price": {"input_per_mtok": 400_000, "output_per_mtok": 400_000}},
    ]
    models = [
        {"alias": "smart", "deployments": ["premium", "onprem", "budget-cloud"]},
        {"alias": "small", "deployments": ["budget-cloud"]},
        {"alias": "cloud-only", "deployments": ["premium"]},
    ]
    tenant = {"id": "router-t", "keys": [{"id": "k", "hash": hash_api_key(KEY)}], "routing": routing, "budgets": budgets or []}
    return make_config(upstream, deployments=deployments, models=models, tenants=[tenant])


async def _ask(http: aiohttp.ClientSession, base: str, model: str) -> tuple[int, dict[str, str]]:
    body = {"model": model, "messages": CHAT, "max_tokens": 5}
    async with http.post(f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}) as resp:
        await resp.read()
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}


async def test_cheapest_allowed_and_reason_in_header_and_ledger(fake_upstream: FakeUpstream) -> None:
    config = _config(fake_upstream.url, {"strategy": "cheapest"})
    async with running_gateway(config) as (base, gateway), aiohttp.ClientSession() as http:
        status, headers = await _ask(http, base, "smart")
        assert status == 200
        assert headers["x-sluicegate-deployment"] == "budget-cloud"
        assert headers["x-sluicegate-route-reason"] == "cheapest:budget-cloud"
        await gateway.billing.drain()
        await gateway.ledger.flush()
        rows = await gateway.ledger.rows("router-t", datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc), 10)
    assert [r.route_reason for r in rows] == ["cheapest:budget-cloud"]


async def test_self_hosted_only_tenant(fake_upstream: FakeUpstream) -> None:
    config = _config(fake_upstream.url, {"strategy": "cheapest", "self_hosted_only": True})
    async with running_gateway(config) as (base, _), aiohttp.ClientSession() as http:
        status, headers = await _ask(http, base, "smart")
        assert (status, headers["x-sluicegate-deployment"]) == (200, "onprem")
        assert headers["x-sluicegate-route-reason"] == "cheapest:onprem,self_hosted_only,-privacy=2"
        status, _ = await _ask(http, base, "cloud-only")
        assert status == 403


async def test_low_budget_downgrades_to_the_cheaper_alias(fake_upstream: FakeUpstream) -> None:
    routing = {"downgrade": {"when_remaining_below": 0.5, "aliases": {"smart": "small"}}}
    # 200 micro-USD; reserving one premium request (about 115 micro-USD worst case) leaves under half.
    budgets = [{"kind": "money", "period": "monthly", "limit": 200}]
    config = _config(fake_upstream.url, routing, budgets)
    async with running_gateway(config) as (base, gateway), aiohttp.ClientSession() as http:
        status, headers = await _ask(http, base, "smart")
        assert (status, headers["x-sluicegate-deployment"]) == (200, "premium")
        await gateway.billing.drain()
        status, headers = await _ask(http, base, "smart")
        assert status == 200
        assert headers["x-sluicegate-deployment"] == "budget-cloud"
        assert headers["x-sluicegate-route-reason"].endswith("downgrade:smart->small")
