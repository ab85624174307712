"""Cost, budgets left, rejections, alias queues and the ledger's backlog, after real requests through the app."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.fake_upstream import FakeUpstream
from budgets.accounting import Reservation
from budgets.store import BudgetRule, Plan
from core.principal import Principal
from router.auth import hash_api_key
from router.gateway import Gateway
from router.metrics import Metrics
from router.metrics_spend import BudgetFigures
from router.routes_ops import metrics as metrics_route
from tests.conftest import make_config
from tests.integration.gateway_server import running_gateway

CHAT = {"messages": [{"role": "user", "content": "hello there"}]}
# tenant --> its API key
KEYS = {name: f"sk-test-{name}-0123456789" for name in ("budgeted", "limited", "broke", "queued", "single")}
# micro-USD per million tokens: $2 in, $8 out
PRICE = {"input_per_mtok": 2_000_000, "output_per_mtok": 8_000_000}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _config(upstream: str) -> Any:
    def tenant(name: str, **extra: Any) -> dict[str, Any]:
        key = {"id": f"{name}-key", "hash": hash_api_key(KEYS[name]), **extra.pop("key", {})}
        return {"id": name, "keys": [key], **extra}

    return make_config(
        upstream,
        deployments=[
            {"name": "priced", "provider": "openai", "base_url": upstream, "model": "fake-model", "price": PRICE},
            {
                "name": "held", "provider": "openai", "base_url": upstream, "model": "fake-slow",
                "options": {"extra_headers": {"x-fake-delay-ms": "600"}},
            },
        ],
        models=[
            {"alias": "priced", "deployments": ["priced"]},
            # One request at a time, one may wait, and not for long.
            {"alias": "queued", "deployments": ["held"], "max_concurrent": 1, "max_queue": 1, "queue_timeout_s": 0.2},
            {"alias": "slow", "deployments": ["held"]},
        ],
        tenants=[
            tenant(
                "budgeted",
                budgets=[{"kind": "money", "period": "monthly", "limit": 1_000_000}],  # $1
                key={"budgets": [{"kind": "tokens", "period": "daily", "limit": 1_000_000}]},
            ),
            tenant("limited", limits={"rpm": 1}),
            tenant("broke", budgets=[{"kind": "tokens", "period": "lifetime", "limit": 5}]),
            tenant("queued"),
            tenant("single", limits={"max_concurrent": 1}),
        ],
    )  # fmt: skip


@pytest.fixture(scope="module")
async def gateway(fake_upstream: FakeUpstream) -> AsyncIterator[tuple[str, Gateway]]:
    async with running_gateway(_config(fake_upstream.url)) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def scrape(http: aiohttp.ClientSession, base: str) -> Samples:
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    return {(s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def chat(http: aiohttp.ClientSession, base: str, tenant: str, model: str) -> tuple[int, dict[str, Any]]:
    headers = {"authorization": f"Bearer {KEYS[tenant]}"}
    async with http.post(f"{base}/v1/chat/completions", json={"model": model, **CHAT}, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_cost_is_counted_in_usd_by_tenant_model_and_deployment(gateway: tuple[str, Gateway], http: aiohttp.ClientSession) -> None:
    base, _ = gateway
    before = await scrape(http, base)
    status, body = await chat(http, base, "budgeted", "priced")
    assert status == 200
    after = await scrape(http, base)
    usage = body["usage"]
    expected = (usage["prompt_tokens"] * 2_000_000 + usage["completion_tokens"] * 8_000_000) / 10**12
    labels = {"tenant": "budgeted", "model": "priced", "deployment": "priced"}
    spent = (value(after, "sluicegate_cost_usd_total", **labels) or 0) - (value(before, "sluicegate_cost_usd_total", **labels) or 0)
    assert spent == pytest.approx(expected, rel=1e-9) and spent > 0


async def test_budgets_left_and_limits_per_tenant_and_key(gateway: tuple[str, Gateway], http: aiohttp.ClientSession) -> None:
    base, _ = gateway
    assert (await chat(http, base, "budgeted", "priced"))[0] == 200
    after = await scrape(http, base)
    money = {"tenant": "budgeted", "scope": "tenant", "key": "", "kind": "money", "period": "monthly"}
    assert value(after, "sluicegate_budget_limit", **money) == 1.0
    left = value(after, "sluicegate_budget_remaining", **money)
    # Left after the request's reservation: its worst case (4096 completion tokens at $8/M) still counts.
    assert left is not None and 1.0 - 0.04 < left < 1.0
    tokens = {"tenant": "budgeted", "scope": "key", "key": "budgeted-key", "kind": "tokens", "period": "daily"}
    assert value(after, "sluicegate_budget_limit", **tokens) == 1_000_000
    left = value(after, "sluicegate_budget_remaining", **tokens)
    assert left is not None and 990_000 < left < 1_000_000
    # A second request leaves less.
    assert (await chat(http, base, "budgeted", "priced"))[0] == 200
    again = await scrape(http, base)
    assert (value(again, "sluicegate_budget_remaining", **tokens) or 0) < left


async def test_rate_limit_and_budget_refusals_are_counted_by_tenant(gateway: tuple[str, Gateway], http: aiohttp.ClientSession) -> None:
    base, _ = gateway
    assert (await chat(http, base, "limited", "priced"))[0] == 200
    status, body = await chat(http, base, "limited", "priced")
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    status, body = await chat(http, base, "broke", "priced")
    assert status == 429 and body["error"]["code"] == "insufficient_quota"
    after = await scrape(http, base)
    assert value(after, "sluicegate_rejections_total", tenant="limited", reason="rate_limit") == 1
    assert value(after, "sluicegate_rejections_total", tenant="broke", reason="budget") == 1
    assert value(after, "sluicegate_rejections_total", tenant="budgeted", reason="budget") is None


async def test_a_concurrency_refusal_is_told_from_a_rate_limit(gateway: tuple[str, Gateway], http: aiohttp.ClientSession) -> None:
    base, _ = gateway
    first = asyncio.create_task(chat(http, base, "single", "slow"))
    await asyncio.sleep(0.2)  # the first holds the tenant's one slot for 600 ms
    status, body = await chat(http, base, "single", "slow")
    assert (await first)[0] == 200
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    after = await scrape(http, base)
    assert value(after, "sluicegate_rejections_total", tenant="single", reason="concurrency") == 1
    assert value(after, "sluicegate_rejections_total", tenant="single", reason="rate_limit") is None


async def test_the_alias_queue_reports_depth_waits_and_what_it_shed(gateway: tuple[str, Gateway], http: aiohttp.ClientSession) -> None:
    base, _ = gateway
    holder = asyncio.create_task(chat(http, base, "queued", "queued"))
    await asyncio.sleep(0.1)  # it holds the only slot for 0.6 s
    waiter = asyncio.create_task(chat(http, base, "queued", "queued"))
    await asyncio.sleep(0.05)
    during = await scrape(http, base)
    assert value(during, "sluicegate_queue_depth", model="queued") == 1
    shed, _ = await chat(http, base, "queued", "queued")  # the queue (of one) is full
    assert shed == 503
    assert (await waiter)[0] == 503  # waited past queue_timeout_s
    assert (await holder)[0] == 200
    after = await scrape(http, base)
    assert value(after, "sluicegate_queue_depth", model="queued") == 0
    assert value(after, "sluicegate_rejections_total", tenant="queued", reason="queue_full") == 1
    assert value(after, "sluicegate_rejections_total", tenant="queued", reason="queue_timeout") == 1
    # The holder found a free slot: one wait, of zero.
    assert value(after, "sluicegate_queue_wait_seconds_count", model="queued") == 1
    assert value(after, "sluicegate_queue_wait_seconds_bucket", model="queued", le="0.001") == 1


async def test_the_ledger_backlog_is_exported(gateway: tuple[str, Gateway], http: aiohttp.ClientSession) -> None:
    base, _ = gateway
    after = await scrape(http, base)
    assert value(after, "sluicegate_ledger_store_up") == 1
    assert value(after, "sluicegate_ledger_spool_bytes") == 0
    assert (value(after, "sluicegate_ledger_pending_rows") or 0) >= 0


def test_a_budget_whose_period_ended_reads_its_whole_limit() -> None:
    figures = BudgetFigures()
    principal = Principal(tenant="t", key_id="k")
    ended = int((time.time() - 60) * 1000)
    rules = (
        BudgetRule(key="budget:t:t:money:month:2020-01", unit="money", limit=5 * 10**12, period_end_ms=ended),
        BudgetRule(key="budget:k:t:k:tokens:lifetime", unit="tokens", limit=1000),
    )
    figures.record(principal, Reservation("r", 10, None, Plan(budgets=rules), remaining=(10**12, 400)))
    remaining = dict(figures.remaining())
    assert remaining[("t", "tenant", "", "money", "monthly")] == 5.0  # the month is over: all of it again
    assert remaining[("t", "key", "k", "tokens", "lifetime")] == 400
    assert dict(figures.limits())[("t", "tenant", "", "money", "monthly")] == 5.0


def test_a_ledger_that_cannot_write_shows_its_spool() -> None:
    from budgets.ledger import LedgerBacklog

    metrics = Metrics()
    metrics.track_ledger(lambda: LedgerBacklog(pending_rows=7, spool_bytes=4096, healthy=False))
    text = metrics.render().decode()
    assert "sluicegate_ledger_pending_rows 7.0" in text
    assert "sluicegate_ledger_spool_bytes 4096.0" in text
    assert "sluicegate_ledger_store_up 0.0" in text


async def test_a_scrape_first_runs_the_bookkeeping_still_waiting(gateway: tuple[str, Gateway]) -> None:
    _, gw = gateway
    booked: list[int] = []
    gw.billing.afterwards.add(booked.append, 1)  # an answered request's spend, not yet counted
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(gateway=gw)), headers={})
    metrics_route.fn(request)
    assert booked == [1]
