"""FinOps queries: usage grouped from the ledger, budgets remaining, scoped by caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from bench.fake_upstream import FakeUpstream
from budgets.ledger_query import UsageRow, to_epoch_us
from budgets.report import render
from router.auth import hash_api_key
from tests.conftest import make_config
from tests.integration.gateway_server import running_gateway

KEYS = {"a": "sk-finops-a-0123456789", "b": "sk-finops-b-0123456789", "ops": "sk-finops-ops-0123456789"}
PRICE = {"input_per_mtok": 3_000_000, "output_per_mtok": 5_000_000}


@pytest.fixture(scope="module")
async def finops(fake_upstream: FakeUpstream) -> AsyncIterator[tuple[str, Any]]:
    tenants = [
        {"id": "fin-a", "keys": [{"id": "ka", "hash": hash_api_key(KEYS["a"])}],
         "budgets": [{"kind": "money", "period": "monthly", "limit": 50_000}]},
        {"id": "fin-b", "keys": [{"id": "kb", "hash": hash_api_key(KEYS["b"])}]},
        {"id": "fin-ops", "keys": [{"id": "kops", "hash": hash_api_key(KEYS["ops"]), "scopes": ["ops:*"]}]},
    ]
    deployments = [{"name": "d", "provider": "openai", "base_url": fake_upstream.url, "model": "fake-model", "price": PRICE}]
    config = make_config(fake_upstream.url, deployments=deployments, models=[{"alias": "m", "deployments": ["d"]}], tenants=tenants)
    async with running_gateway(config) as (base, gateway), aiohttp.ClientSession() as http:
        for who, n in (("a", 3), ("b", 2)):
            for _ in range(n):
                body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
                async with http.post(f"{base}/v1/chat/completions", json=body, headers=_auth(who)) as r:
                    assert r.status == 200
        await gateway.billing.drain()
        await gateway.ledger.flush()
        yield base, http


def _auth(who: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[who]}"}


async def _get(http: aiohttp.ClientSession, url: str, who: str) -> tuple[int, Any]:
    async with http.get(url, headers=_auth(who)) as resp:
        return resp.status, await resp.json()


async def test_tenant_sees_only_its_own_usage(finops) -> None:
    base, http = finops
    status, body = await _get(http, f"{base}/v1/ledger/usage?group_by=tenant,model", "a")
    assert status == 200
    assert [(r["tenant"], r["model"], r["requests"]) for r in body["data"]] == [("fin-a", "m", 3)]
    row = body["data"][0]
    assert row["cost_pico_usd"] == row["prompt_tokens"] * 3_000_000 + row["completion_tokens"] * 5_000_000
    status, _ = await _get(http, f"{base}/v1/ledger/usage?tenant=fin-b", "a")
    assert status == 404


async def test_ops_sees_every_tenant(finops) -> None:
    base, http = finops
    status, body = await _get(http, f"{base}/v1/ledger/usage?group_by=tenant", "ops")
    assert status == 200
    counts = {r["tenant"]: r["requests"] for r in body["data"]}
    assert counts == {"fin-a": 3, "fin-b": 2}
    status, body = await _get(http, f"{base}/v1/ledger/usage?group_by=day&tenant=fin-b", "ops")
    assert [r["requests"] for r in body["data"]] == [2]


async def test_bad_query_parameters_are_400(finops) -> None:
    base, http = finops
    status, body = await _get(http, f"{base}/v1/ledger/usage?group_by=prompt", "a")
    assert status == 400 and body["error"]["param"] == "group_by"
    status, body = await _get(http, f"{base}/v1/ledger/usage?from=yesterday", "a")
    assert status == 400 and body["error"]["param"] == "from"


async def test_budgets_remaining(finops) -> None:
    base, http = finops
    status, body = await _get(http, f"{base}/v1/ledger/budgets", "a")
    assert status == 200
    (line,) = body["data"]
    assert line["limit"] == 50_000 * 10**6 and line["reserved"] == 0
    assert line["spent"] > 0 and line["remaining"] == line["limit"] - line["spent"]
    _, usage = await _get(http, f"{base}/v1/ledger/usage", "a")
    assert usage["data"][0]["cost_pico_usd"] == line["spent"]


async def test_unauthenticated_is_401(finops) -> None:
    base, http = finops
    async with http.get(f"{base}/v1/ledger/usage") as resp:
        assert resp.status == 401


def test_report_formats() -> None:
    rows = [UsageRow(group={"tenant": "t1"}, requests=2, prompt_tokens=10, completion_tokens=4, cached_tokens=0, cost=1_500_000, errors=0)]
    table = render(rows, ["tenant"], "table")
    assert table.splitlines()[0].split()[:3] == ["tenant", "requests", "prompt_tokens"]
    assert "0.000001500000" in table
    csv_text = render(rows, ["tenant"], "csv")
    assert csv_text.splitlines()[1] == "t1,2,10,4,0,0.000001500000,0"
    assert msgspec.json.decode(render(rows, ["tenant"], "json"))[0]["cost_pico_usd"] == 1_500_000


def test_cli_report_reads_the_ledger(tmp_path) -> None:
    import asyncio
    import subprocess
    import sys
    from datetime import datetime, timezone

    from budgets.ledger_row import LedgerRow
    from budgets.ledger_sqlite import SQLiteLedger

    db = tmp_path / "ledger.sqlite"
    now = datetime.now(timezone.utc)

    async def seed() -> None:
        ledger = SQLiteLedger(str(db))
        await ledger.start()
        for i, tenant in enumerate(["t1", "t1", "t2"]):
            ledger.record(LedgerRow(
                request_id=f"r{i}", tenant=tenant, key_id="k", model="m", deployment="d", provider="openai",
                prompt_tokens=10, completion_tokens=5, cached_tokens=0, cost=1_000_000 * (i + 1), latency_ms=1.0,
                ttft_ms=None, status=200, error=None, route_reason=None, pii_entities={}, trace_id=None, stream=False,
                config_version=1, arm=None, started_us=to_epoch_us(now), finished_us=to_epoch_us(now),
            ))
        await ledger.close()

    asyncio.run(seed())
    config = tmp_path / "gw.yaml"
    config.write_text(f"state: {{ledger_path: {db}}}\n")
    out = subprocess.run(
        [sys.executable, "-m", "router", "ledger", "report", "--config", str(config), "--group-by", "tenant", "--format", "csv"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert out.splitlines() == [
        "tenant,requests,prompt_tokens,completion_tokens,cached_tokens,cost_usd,errors",
        "t1,2,20,10,0,0.000003000000,0",
        "t2,1,10,5,0,0.000003000000,0",
    ]
    bad = subprocess.run(
        [sys.executable, "-m", "router", "ledger", "report", "--config", str(config), "--group-by", "colour"],
        capture_output=True, text=True,
    )
    assert bad.returncode == 2 and "colour" in bad.stderr
