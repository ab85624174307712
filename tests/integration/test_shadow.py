"""The shadow phase end to end: mirrored calls never reach a client, a tenant's bill or a private tenant.

Embedded mode, two separate fakes (stable, candidate); helpers are the canary tests'.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from bench.fake_upstream import start_fake_upstream
from tests.integration.gateway_server import running_gateway
from tests.integration.test_canary import (
    OTHER,
    USER,
    Fakes,
    Json,
    burst,
    canary,
    canary_actions,
    canary_config,
    chat,
    chats,
    eventually,
    get_json,
    metric,
    started,
)

SHADOW: Json = {"steps": [50, 100], "state": {"phase": "shadow"}}


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    stable, candidate = await start_fake_upstream(), await start_fake_upstream()
    yield stable, candidate
    await stable.close()
    await candidate.close()


def _stable_answer(status: int, headers: dict[str, str], body: Json) -> bool:
    return status == 200 and headers["x-sluicegate-deployment"] == "stable" and bool(body["choices"][0]["message"]["content"])


async def test_a_failing_candidate_is_mirrored_billed_to_the_shadow_account_and_rolled_back(fakes: Fakes, tmp_path: Path) -> None:
    _, candidate = fakes
    # Latency ratios between two identical fakes are noise: the candidate's errors decide here.
    shadow = {"share": 1.0, "bill_to": "shadow-acct", "max_in_flight": 64}
    spec = {**SHADOW, "interval_s": 1.0, "min_samples": 10, "gates": {"max_p95_latency_ratio": None}, "shadow": shadow}
    budget = {"budgets": [{"kind": "tokens", "period": "daily", "limit": 1_000_000}]}
    since = datetime.now(UTC) - timedelta(minutes=1)
    config = canary_config(fakes, tmp_path, spec, tenant=budget)
    async with running_gateway(config) as (base, gateway), aiohttp.ClientSession() as http:
        await started(http, base)
        answers = [await chat(http, base) for _ in range(5)]  # mirrored while the candidate is healthy

        async def mirrors_done() -> bool:
            results = [await metric(http, base, "sluicegate_shadow_requests_total", model="m", result=r) for r in ("ok", "error", "shed")]
            return sum(results) == sum(1 for _, h, _ in answers if h.get("x-sluicegate-canary") == "mirrored")

        await eventually(mirrors_done, 5, "healthy mirrors finished")
        candidate.set_behavior("error_500")
        deadline = time.monotonic() + 15
        while (await canary(http, base))["phase"] == "shadow":
            assert time.monotonic() < deadline, "the shadowed candidate was never rolled back"
            answers += await burst(http, base, 4)
        await eventually(mirrors_done, 5, "failing mirrors finished")

        state = await canary(http, base)
        assert (state["phase"], state["decision"]) == ("rolled_back", "rollback") and "error rate" in state["reason"]
        assert await canary_actions(http, base) == ["started", "rollback"]  # never entered the canary phase
        rolled_back = state["config_version"]
        # Clients had stable's answers only; each one served before the rollback was mirrored.
        for answer in answers:
            assert _stable_answer(*answer)
            before = int(answer[1]["x-sluicegate-config-version"]) < rolled_back
            assert answer[1].get("x-sluicegate-canary") == ("mirrored" if before else None)
        mirrored = chats(candidate)
        assert mirrored == sum(1 for _, h, _ in answers if h.get("x-sluicegate-canary") == "mirrored") >= 10
        assert await metric(http, base, "sluicegate_shadow_requests_total", model="m", result="error") > 0
        after = await burst(http, base, 10)
        assert all(_stable_answer(*a) and "x-sluicegate-canary" not in a[1] for a in after)
        assert chats(candidate) == mirrored

        await gateway.billing.drain()
        assert gateway.ledger is not None
        await gateway.ledger.flush()
        rows = await gateway.ledger.rows(None, since, datetime.now(UTC) + timedelta(minutes=1), 10_000)
        tenant_rows = [r for r in rows if r.tenant == "t"]
        shadow_rows = [r for r in rows if r.tenant == "shadow-acct"]
        assert len(tenant_rows) == len(answers) + len(after) and len(shadow_rows) == mirrored
        assert {(r.deployment, r.arm) for r in tenant_rows} == {("stable", "mirrored"), ("stable", None)}
        assert {(r.deployment, r.arm, r.key_id) for r in shadow_rows} == {("candidate", "shadow", "shadow")}
        assert {r.request_id.removesuffix("-shadow") for r in shadow_rows} <= {r.request_id for r in tenant_rows}
        assert all(r.request_id.endswith("-shadow") for r in shadow_rows)
        assert sum(r.prompt_tokens + r.completion_tokens for r in shadow_rows) > 0  # the healthy mirrors used tokens
        # The tenant's budget was charged for its own calls only.
        lines = (await get_json(http, f"{base}/v1/ledger/budgets", USER))["data"]
        spent = next(line["spent"] for line in lines if line["scope"] == "t:t")
        assert spent == sum(r.prompt_tokens + r.completion_tokens for r in tenant_rows)


async def test_mirrors_beyond_max_in_flight_are_shed_and_clients_never_wait_for_them(fakes: Fakes, tmp_path: Path) -> None:
    _, candidate = fakes
    candidate.set_behavior("slow", delay_ms=1500)
    spec = {**SHADOW, "interval_s": 60, "min_samples": 1000, "shadow": {"share": 1.0, "max_in_flight": 1}}
    async with running_gateway(canary_config(fakes, tmp_path, spec)) as (base, _), aiohttp.ClientSession() as http:
        began = time.monotonic()
        answers = await burst(http, base, 12)
        assert time.monotonic() - began < 1.5, "clients waited for their mirrored calls"
        assert all(_stable_answer(*answer) for answer in answers)
        assert await metric(http, base, "sluicegate_shadow_requests_total", model="m", result="shed") > 0
        assert chats(candidate) <= 1


async def test_a_self_hosted_only_tenant_is_never_mirrored_to_a_cloud_candidate(fakes: Fakes, tmp_path: Path) -> None:
    _, candidate = fakes
    spec = {**SHADOW, "interval_s": 60, "min_samples": 1000, "shadow": {"share": 1.0}}
    private = {"routing": {"self_hosted_only": True}}
    async with running_gateway(canary_config(fakes, tmp_path, spec, tenant=private)) as (base, _), aiohttp.ClientSession() as http:
        for _ in range(6):
            status, headers, body = await chat(http, base, user="private-tenant")
            assert _stable_answer(status, headers, body) and headers["x-sluicegate-canary"] == "stable"
        # Another tenant's requests are mirrored: once they arrive, any of the first tenant's would have too.
        for _ in range(3):
            status, headers, body = await chat(http, base, OTHER, user="open-tenant")
            assert _stable_answer(status, headers, body) and headers["x-sluicegate-canary"] == "mirrored"

        async def arrived() -> bool:
            return chats(candidate) >= 3

        await eventually(arrived, 5, "the other tenant's mirrors")
        users = [r["json"]["user"] for r in candidate.requests if r["path"] == "/v1/chat/completions"]
        assert users == ["open-tenant"] * 3
