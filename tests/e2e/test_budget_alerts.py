"""Budget alerts end to end: the gateway app, the fake upstream and a webhook receiver that checks signatures.

Every request uses 10 tokens (2 prompt words, ``max_tokens`` 8) and costs
10 micro-USD, so usage crosses 80, 90 and 100 % of a 100 budget at known
requests. With the in-process store one gateway serves; with Redis two
gateways share it and take turns, and each threshold still goes out once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bench.fake_upstream import FakeUpstream
from core.config import Config
from router.auth import hash_api_key
from tests.fakes.webhook import webhook_receiver
from tests.integration.gateway_server import running_gateway

REDIS_URL = "redis://127.0.0.1:6379/0"
SECRET_ENV = "SLUICEGATE_TEST_BUDGET_WEBHOOK_SECRET"
SECRET = "budget-webhook-secret-for-tests"
OPS_KEY = "sk-budget-alerts-ops-0123456789"
TOKENS_KEY = "sk-budget-alerts-tokens-0123456789"
MONEY_KEY = "sk-budget-alerts-money-0123456789"
PRICE = {"input_per_mtok": 1_000_000, "output_per_mtok": 1_000_000}  # 1 micro-USD a token
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}
Json = dict[str, Any]


class Receiver:
    """The webhook: answers with ``statuses`` in turn (then 204) and keeps each call whose signature is valid."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.calls: list[tuple[int, Json]] = []  # (status answered, event)
        self.invalid = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        stamp = request.headers.get("x-sluicegate-timestamp", "")
        expected = "sha256=" + hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        fresh = stamp.isdigit() and abs(time.time() - int(stamp)) < 300
        if not (fresh and hmac.compare_digest(request.headers.get("x-sluicegate-signature", ""), expected)):
            self.invalid += 1
            return web.Response(status=401)
        status = self.statuses.pop(0) if self.statuses else 204
        self.calls.append((status, msgspec.json.decode(body)))
        return web.Response(status=status)

    def delivered(self, tenant: str) -> list[Json]:
        return [event for status, event in self.calls if status < 300 and event["tenant"] == tenant]

    async def wait_for(self, tenant: str, count: int, timeout_s: float = 10.0) -> list[Json]:
        deadline = time.monotonic() + timeout_s
        while len(self.delivered(tenant)) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.delivered(tenant)


@pytest.fixture
async def receiver(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, Receiver]]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    hook = Receiver()
    async with webhook_receiver(hook.handle) as url:
        yield url, hook


def gateway_config(upstream: str, hook: str, suffix: str, *, redis: bool) -> Config:
    def tenant(name: str, key: str, budget: Json) -> Json:
        return {"id": f"{name}-{suffix}", "keys": [{"id": "k", "hash": hash_api_key(key)}], "budgets": [budget]}

    raw: Json = {
        "server": {"log_level": "warning"},
        "deployments": [{"name": "priced", "provider": "openai", "base_url": upstream, "model": "fake-model", "price": PRICE}],
        "models": [{"alias": "m", "deployments": ["priced"]}],
        "tenants": [
            {"id": "ops", "keys": [{"id": "ops", "hash": hash_api_key(OPS_KEY), "scopes": ["ops:admin"]}]},
            tenant("tokens", TOKENS_KEY, {"kind": "tokens", "period": "monthly", "limit": 100, "hard": False}),
            tenant("money", MONEY_KEY, {"kind": "money", "period": "daily", "limit": 100}),
        ],
        "alerts": {"webhook_url": hook, "webhook_secret": {"env": SECRET_ENV}, "timeout_s": 2, "retries": 3, "backoff_s": 0.05},
        "state": {"ledger": "off", **({"counters": "redis", "redis_url": REDIS_URL} if redis else {})},
    }
    return msgspec.convert(raw, Config)


async def chat(http: aiohttp.ClientSession, base: str, key: str) -> int:
    async with http.post(f"{base}/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"}) as r:
        await r.read()
        return r.status


async def audit(http: aiohttp.ClientSession, base: str) -> list[Json]:
    async with http.get(f"{base}/admin/v1/audit?limit=1000", headers={"authorization": f"Bearer {OPS_KEY}"}) as r:
        assert r.status == 200, await r.text()
        return [e for e in (await r.json())["data"] if e["action"] == "budget.threshold"]


async def alerts_counted(http: aiohttp.ClientSession, base: str) -> Counter[tuple[str, str]]:
    async with http.get(f"{base}/metrics") as r:
        text = await r.text()
    counted: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sluicegate_budget_alerts_total":
                counted[sample.labels["tenant"], sample.labels["threshold"]] += int(sample.value)
    return counted


async def redis_available() -> bool:
    client = aioredis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(await client.ping())
    except (OSError, aioredis.RedisError):
        return False
    finally:
        await client.aclose()


def thresholds(events: list[Json]) -> list[int]:
    return sorted(event["threshold"] for event in events)


@pytest.mark.parametrize("counters", ["memory", "redis"])
async def test_each_threshold_is_alerted_once_signed_audited_and_counted(
    counters: str, fake_upstream: FakeUpstream, receiver: tuple[str, Receiver]
) -> None:
    redis = counters == "redis"
    if redis and not await redis_available():
        pytest.skip(f"no Redis at {REDIS_URL}")
    hook_url, hook = receiver
    suffix = uuid.uuid4().hex[:8]  # claims in Redis outlive the test: tenants of their own
    tokens_tenant, money_tenant = f"tokens-{suffix}", f"money-{suffix}"
    config = gateway_config(fake_upstream.url, hook_url, suffix, redis=redis)
    async with AsyncExitStack() as stack:
        bases = [(await stack.enter_async_context(running_gateway(config)))[0] for _ in range(2 if redis else 1)]
        http = await stack.enter_async_context(aiohttp.ClientSession())

        def turn(i: int) -> str:
            return bases[i % len(bases)]

        # Tokens (soft, 100 a month): 12 requests of 10 tokens cross 80, 90 and 100 %. Each
        # alert is awaited as it falls due, so that it reports what was spent then.
        for i in range(12):
            assert await chat(http, turn(i), TOKENS_KEY) == 200
            await hook.wait_for(tokens_tenant, {8: 1, 9: 2, 10: 3}.get(i + 1, 0))
        events = await hook.wait_for(tokens_tenant, 3)
        assert thresholds(events) == [80, 90, 100]
        by_threshold = {event["threshold"]: event for event in events}
        assert [by_threshold[t]["spent"] for t in (80, 90, 100)] == [80, 90, 100]
        first = by_threshold[80]
        assert (first["type"], first["scope"], first["key_id"], first["reason"]) == ("budget.threshold", "tenant", None, "spent")
        assert first["budget"] == {"kind": "tokens", "period": "monthly", "limit": 100, "unit": "tokens", "hard": False}
        assert first["period_key"] == time.strftime("month:%Y-%m", time.gmtime())

        # Money (hard, 100 micro-USD a day): 80 spent; then a request whose worst case no longer
        # fits is refused, and the budget counts as used in full (90 and 100 % at once).
        statuses = []
        for i in range(12):
            statuses.append(await chat(http, turn(i), MONEY_KEY))
            await hook.wait_for(money_tenant, 1 if i + 1 == 8 else 0)
        assert statuses[:8] == [200] * 8 and statuses[-1] == 429, statuses
        events = await hook.wait_for(money_tenant, 3)
        assert thresholds(events) == [80, 90, 100]
        spent = {event["threshold"]: (event["spent"], event["reason"]) for event in events}
        assert spent[80] == (80, "spent")
        refused_at = 10 * statuses.index(429)
        for threshold in (90, 100):
            assert spent[threshold] in {(threshold, "spent"), (refused_at, "refused")}, spent
        assert events[0]["budget"] == {"kind": "money", "period": "daily", "limit": 100, "unit": "micro_usd", "hard": True}

        # Nothing more is sent, whatever follows.
        for i in range(4):
            await chat(http, turn(i), TOKENS_KEY)
            await chat(http, turn(i), MONEY_KEY)
        await asyncio.sleep(1.5)
        delivered = hook.delivered(tokens_tenant) + hook.delivered(money_tenant)
        assert len(delivered) == 6 and len({event["id"] for event in delivered}) == 6
        assert hook.invalid == 0

        # One audit entry and one count per threshold, wherever it was sent from.
        entries = [entry for base in bases for entry in await audit(http, base)]
        assert Counter((e["tenant"], e["new"]["threshold"]) for e in entries) == Counter(
            {(tenant, t): 1 for tenant in (tokens_tenant, money_tenant) for t in (80, 90, 100)}
        )
        assert {(e["actor"], e["target"].split("/")[1]) for e in entries} == {("system", "tenant")}
        counted: Counter[tuple[str, str]] = Counter()
        for base in bases:
            counted.update(await alerts_counted(http, base))
        assert counted == Counter({(tenant, str(t)): 1 for tenant in (tokens_tenant, money_tenant) for t in (80, 90, 100)})


async def test_a_receiver_that_fails_twice_gets_the_alert_once_with_valid_signatures(
    fake_upstream: FakeUpstream, receiver: tuple[str, Receiver]
) -> None:
    hook_url, hook = receiver
    hook.statuses = [503, 503]
    suffix = uuid.uuid4().hex[:8]
    config = gateway_config(fake_upstream.url, hook_url, suffix, redis=False)
    async with running_gateway(config) as (base, _), aiohttp.ClientSession() as http:
        for _ in range(8):  # 80 tokens: the 80 % threshold only
            assert await chat(http, base, TOKENS_KEY) == 200
        delivered = await hook.wait_for(f"tokens-{suffix}", 1)
        await asyncio.sleep(0.5)
    assert [status for status, _ in hook.calls] == [503, 503, 204] and hook.invalid == 0
    assert len(delivered) == 1 and delivered[0]["threshold"] == 80
    assert len({msgspec.json.encode(event) for _, event in hook.calls}) == 1  # the same event (and id) each try
