"""Routing policy through the gateway: cheapest allowed, privacy, budget-aware downgrade, recorded reason."""

from __future__ import annotations

from datetime import datetime, timezone

import aiohttp

from bench.fake_upstream import FakeUpstream
from core.config_check import cross_check
from router.auth import hash_api_key
from tests.conftest import make_config
from tests.integration.gateway_server import running_gateway

KEY = "sk-routing-0123456789"
CHAT = [{"role": "user", "content": "hello"}]


def _config(upstream: str, routing: dict, budgets: list | None = None):
    deployments = [
        {"name": "premium", "provider": "openai", "base_url": upstream, "model": "fake-model",
         "price": {"input_per_mtok": 5_000_000, "output_per_mtok": 15_000_000}},
        {"name": "budget-cloud", "provider": "openai", "base_url": upstream, "model": "fake-model",
         "price": {"input_per_mtok": 150_000, "output_per_mtok": 600_000}},
        {"name": "onprem", "provider": "openai_compatible", "base_url": upstream, "model": "fake-model", "privacy": "self_hosted",
         "price": {"input_per_mtok": 400_000, "output_per_mtok": 400_000}},
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
        rows = await gateway.ledger.rows(
            "router-t", datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc), 10
        )
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


async def _models(http: aiohttp.ClientSession, base: str) -> list[str]:
    async with http.get(f"{base}/v1/models", headers={"authorization": f"Bearer {KEY}"}) as resp:
        assert resp.status == 200
        return [m["id"] for m in (await resp.json())["data"]]


async def _model(http: aiohttp.ClientSession, base: str, model: str) -> tuple[int, dict]:
    async with http.get(f"{base}/v1/models/{model}", headers={"authorization": f"Bearer {KEY}"}) as resp:
        return resp.status, await resp.json()


async def test_models_list_only_what_the_tenant_may_use(fake_upstream: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as http:
        async with running_gateway(_config(fake_upstream.url, {})) as (base, _):
            assert await _models(http, base) == ["smart", "small", "cloud-only"]
        # Self-hosted only: an alias with no self-hosted deployment is of no use to the tenant.
        async with running_gateway(_config(fake_upstream.url, {"self_hosted_only": True})) as (base, _):
            assert await _models(http, base) == ["smart"]
            status, body = await _model(http, base, "small")
            assert (status, body["error"]["code"]) == (404, "model_not_found")
            assert (await _model(http, base, "smart"))[0] == 200
        async with running_gateway(_config(fake_upstream.url, {"allowed_deployments": ["premium"]})) as (base, _):
            assert await _models(http, base) == ["smart", "cloud-only"]


async def test_allowed_models_hides_and_refuses_the_rest_like_unknown_ones(fake_upstream: FakeUpstream) -> None:
    config = _config(fake_upstream.url, {"allowed_models": ["small"]})
    async with running_gateway(config) as (base, _), aiohttp.ClientSession() as http:
        assert await _models(http, base) == ["small"]
        assert (await _ask(http, base, "small"))[0] == 200
        body = {"model": "smart", "messages": CHAT}
        async with http.post(f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}) as resp:
            refused = (resp.status, await resp.json())
        body["model"] = "no-such-model"
        async with http.post(f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}) as resp:
            unknown = (resp.status, await resp.json())
        assert refused[0] == unknown[0] == 404
        assert refused[1]["error"]["code"] == unknown[1]["error"]["code"] == "model_not_found"
        assert (await _model(http, base, "smart"))[0] == 404


def test_allowed_models_must_name_known_aliases() -> None:
    config = _config("http://127.0.0.1:9/v1", {"allowed_models": ["small", "gpt-9"]})
    assert cross_check(config) == ["key `tenants[0].routing.allowed_models`: unknown alias 'gpt-9'"]
