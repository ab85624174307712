"""Budgets that never overspend and a ledger that agrees to the unit, on real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec

from bench.fake_upstream import FakeUpstream, start_fake_upstream
from budgets.store_redis import RedisCounterStore
from budgets.tokens import tiktoken_count
from core.config import Config
from router.auth import hash_api_key
from tests.contract.test_ledger import database_dsn
from tests.integration.gateway_server import free_port, running_gateway, wait_healthy
from tests.integration.test_ledger_postgres_outage import TcpProxy, database, proxy  # noqa: F401 (fixtures)

REDIS_URL = "redis://127.0.0.1:6379/0"
PRICE = {"input_per_mtok": 1_000_000, "output_per_mtok": 2_000_000}
KEY = "sk-budget-test-0123456789"
CHAT = [{"role": "user", "content": "hello there"}]
EPOCH, FAR = datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc)


def budget_config(upstream: str, tenant: str, dsn: str, limit_micro: int, tmp: Path, **deployment: Any) -> dict[str, Any]:
    return {
        "server": {"log_level": "warning"},
        "deployments": [
            {"name": "priced", "provider": "openai", "base_url": upstream, "model": "fake-model", "price": PRICE, **deployment}
        ],
        "models": [{"alias": "priced", "deployments": ["priced"]}],
        "tenants": [
            {
                "id": tenant,
                "keys": [{"id": "k", "hash": hash_api_key(KEY)}],
                "budgets": [{"kind": "money", "period": "monthly", "limit": limit_micro}],
            }
        ],
        "state": {
            "counters": "redis", "redis_url": REDIS_URL, "ledger": "postgres", "postgres_dsn": dsn,
            "ledger_spool_path": str(tmp / "ledger.spool"),
        },
    }


def cost_of(usage: dict[str, int]) -> int:
    return usage["prompt_tokens"] * PRICE["input_per_mtok"] + usage["completion_tokens"] * PRICE["output_per_mtok"]


async def fire(base: str, n: int, **extra: Any) -> list[tuple[int, dict[str, Any], str]]:
    """n concurrent chat requests; (status, body, request id) of each."""
    body = msgspec.json.encode({"model": "priced", "messages": CHAT, "max_tokens": 20, **extra})
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one() -> tuple[int, dict[str, Any], str]:
            async with http.post(f"{base}/v1/chat/completions", data=body, headers=headers) as resp:
                return resp.status, await resp.json(content_type=None), resp.headers.get("x-request-id", "")

        return await asyncio.gather(*(one() for _ in range(n)))


async def ledger_costs(dsn: str, tenant: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT request_id, cost, status FROM ledger WHERE tenant = $1", tenant)
    finally:
        await conn.close()
    return {r["request_id"]: int(r["cost"]) for r in rows}


async def spent_and_reserved(tenant: str) -> tuple[int, int]:
    store = RedisCounterStore(REDIS_URL)
    try:
        month = time.strftime("%Y-%m", time.gmtime())
        return await store.budget_state(f"budget:t:{tenant}:money:month:{month}")
    finally:
        await store.close()


async def test_concurrent_requests_never_overspend_and_everything_agrees(
    fake_upstream: FakeUpstream, database: str, tenant: str, tmp_path: Path  # noqa: F811
) -> None:
    dsn = database_dsn(database)
    # Each request costs about 42 micro-USD: the budget fits about 100 of 500.
    limit_micro = 4_200
    config = msgspec.convert(budget_config(fake_upstream.url, tenant, dsn, limit_micro, tmp_path), Config)
    async with running_gateway(config) as (base, gateway):
        results = await fire(base, 500)
        await gateway.billing.drain()
        assert gateway.ledger is not None
        await gateway.ledger.flush()
    served = [(body, rid) for status, body, rid in results if status == 200]
    refused = [body for status, body, _ in results if status != 200]
    assert 50 <= len(served) <= 100
    assert {b["error"]["code"] for b in refused} == {"insufficient_quota"}, [
        b["error"] for b in refused if b["error"]["code"] != "insufficient_quota"
    ][:3]
    spent, reserved = await spent_and_reserved(tenant)
    client_costs = sum(cost_of(body["usage"]) for body, _ in served)
    print(f"served {len(served)} of 500; spent {spent} of {limit_micro * 10**6} pico-USD")
    ledger = await ledger_costs(dsn, tenant)
    assert reserved == 0
    assert spent <= limit_micro * 10**6
    assert spent == client_costs == sum(ledger.values())
    assert {rid for _, rid in served} <= set(ledger)


def _start_gateway(config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--config", str(config_path)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=config_path.parent,
        )


async def test_two_replicas_share_one_budget(
    fake_upstream: FakeUpstream, database: str, tenant: str, tmp_path: Path  # noqa: F811
) -> None:
    dsn = database_dsn(database)
    limit_micro = 4_200
    processes = []
    bases = []
    try:
        for i in range(2):
            port = free_port()
            raw = budget_config(fake_upstream.url, tenant, dsn, limit_micro, tmp_path / f"r{i}")
            raw["server"]["port"] = port
            (tmp_path / f"r{i}").mkdir()
            path = tmp_path / f"r{i}" / "config.yaml"
            path.write_bytes(msgspec.yaml.encode(raw))
            processes.append(_start_gateway(path, tmp_path / f"r{i}" / "log"))
            bases.append(f"http://127.0.0.1:{port}")
        await asyncio.gather(*(wait_healthy(b) for b in bases))
        both = await asyncio.gather(fire(bases[0], 250), fire(bases[1], 250))
    finally:
        for process in processes:
            process.terminate()  # SIGTERM: drain, settle, flush the ledger, exit
        for process in processes:
            assert process.wait(timeout=30) == 0
    served = [body for results in both for status, body, _ in results if status == 200]
    assert 50 <= len(served) <= 100
    spent, reserved = await spent_and_reserved(tenant)
    ledger = await ledger_costs(dsn, tenant)
    assert reserved == 0
    assert spent <= limit_micro * 10**6
    assert spent == sum(cost_of(b["usage"]) for b in served) == sum(ledger.values())


async def test_ledger_keeps_every_row_through_a_postgres_outage(
    fake_upstream: FakeUpstream, database: str, proxy: TcpProxy, tenant: str, tmp_path: Path  # noqa: F811
) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}"
    raw = budget_config(fake_upstream.url, tenant, dsn, 10**9, tmp_path)
    config = msgspec.convert(raw, Config)
    ids: list[str] = []
    async with running_gateway(config) as (base, gateway):
        ids += [rid for status, _, rid in await fire(base, 50) if status == 200]
        await proxy.stop()  # PostgreSQL goes away mid-run
        for _ in range(3):
            ids += [rid for status, _, rid in await fire(base, 50) if status == 200]
        await proxy.start()  # and comes back
        ids += [rid for status, _, rid in await fire(base, 50) if status == 200]
        await gateway.billing.drain()
        assert gateway.ledger is not None
        for _ in range(100):
            await gateway.ledger.flush()
            if len(await ledger_costs(database_dsn(database), tenant)) >= len(ids):
                break
            await asyncio.sleep(0.1)
    assert len(ids) == 250
    conn = await asyncpg.connect(database_dsn(database))
    try:
        rows = await conn.fetch("SELECT request_id, count(*) AS n FROM ledger WHERE tenant = $1 GROUP BY request_id", tenant)
    finally:
        await conn.close()
    counts = {r["request_id"]: r["n"] for r in rows}
    assert set(counts) == set(ids)
    assert set(counts.values()) == {1}


def stream_config(upstream: str, tenant: str, tmp: Path, model: str, budget: dict[str, Any], **options: Any) -> Config:
    raw = {
        "deployments": [
            {"name": "d", "provider": "openai", "base_url": upstream, "model": model, "price": PRICE, "options": options}
        ],
        "models": [{"alias": "priced", "deployments": ["d"]}],
        "tenants": [{"id": tenant, "keys": [{"id": "k", "hash": hash_api_key(KEY)}], "budgets": [budget]}],
        "state": {"ledger_path": str(tmp / "ledger.sqlite"), "ledger_spool_path": str(tmp / "ledger.spool")},
    }
    return msgspec.convert(raw, Config)


async def _events(resp: aiohttp.ClientResponse) -> list[bytes]:
    raw = await resp.read()
    return [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]


async def _cut_stream(upstream_url: str, tenant: str, tmp: Path) -> tuple[list[bytes], int, int]:
    """A stream from an upstream that ignores max_tokens, for a tenant whose token budget covers the prompt and a few
    words: the events the client got, and the budget's spent and reserved tokens after settlement."""
    budget = {"kind": "tokens", "period": "lifetime", "limit": 20}
    config = stream_config(upstream_url, tenant, tmp, "ignore_max_tokens", budget)
    async with running_gateway(config) as (base, gateway):
        body = {"model": "priced", "messages": CHAT, "stream": True, "stream_options": {"include_usage": True}}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}) as r:
                assert r.status == 200
                events = await _events(r)
        await gateway.billing.drain()
        spent, reserved = await gateway.counters.budget_state(f"budget:t:{tenant}:tokens:lifetime")
    return events, spent, reserved


async def test_stream_the_budget_cannot_pay_for_is_cut_off_cleanly(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    events, spent, reserved = await _cut_stream(fake_upstream.url, "cut", tmp_path)
    assert events[-1] == b"[DONE]"
    final, usage_chunk = msgspec.json.decode(events[-3]), msgspec.json.decode(events[-2])
    assert final["choices"][0]["finish_reason"] == "length"
    assert usage_chunk["choices"] == []
    content = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in map(msgspec.json.decode, events[:-3]) if c["choices"]
    )
    assert 0 < len(content.split()) < 20  # cut well before the 20 words the upstream sends
    usage = usage_chunk["usage"]
    assert reserved == 0
    assert spent == usage["total_tokens"] <= 20


async def test_a_stream_read_whole_is_cut_at_the_same_word_as_one_read_event_by_event(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    # The same cut, once from an upstream whose events arrive in reads of their own or a few, once from one that writes
    # the whole stream at once: the relay takes a read's plain events as one run, and must split it where the budget ends.
    whole = await start_fake_upstream(chunks_per_write=1000)
    answers = []
    try:
        for n, upstream in enumerate((fake_upstream, whole)):
            (tmp_path / str(n)).mkdir()
            events, spent, _ = await _cut_stream(upstream.url, f"cut{n}", tmp_path / str(n))
            chunks = [msgspec.json.decode(e) for e in events[:-1]]
            content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            answers.append((content, chunks[-2]["choices"][0]["finish_reason"], chunks[-1]["usage"], spent))
    finally:
        await whole.close()
    assert answers[0] == answers[1]
    assert 0 < len(answers[0][0].split()) < 20 and answers[0][1] == "length"


async def test_upstream_is_told_the_allowance_when_the_client_sets_no_max_tokens(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    budget = {"kind": "tokens", "period": "lifetime", "limit": 20}
    config = stream_config(fake_upstream.url, "told", tmp_path, "fake-model", budget)
    async with running_gateway(config) as (base, gateway):
        fake_upstream.requests.clear()
        body = {"model": "priced", "messages": CHAT}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}) as r:
                answer = await r.json()
        await gateway.billing.drain()
        spent, _ = await gateway.counters.budget_state("budget:t:told:tokens:lifetime")
    sent = fake_upstream.requests[-1]["json"]
    assert 0 < sent["max_tokens"] < 20
    assert answer["choices"][0]["finish_reason"] == "length"
    assert spent == answer["usage"]["total_tokens"] <= 20


async def test_client_disconnect_mid_stream_is_billed_for_what_was_generated(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    budget = {"kind": "money", "period": "monthly", "limit": 10**6}
    config = stream_config(
        fake_upstream.url, "gone", tmp_path, "fake-model", budget,
        extra_headers={"x-fake-chunks": "200", "x-fake-chunk-delay-ms": "20"},
    )
    async with running_gateway(config) as (base, gateway):
        body = {"model": "priced", "messages": CHAT, "stream": True, "max_tokens": 200}
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"})
            request_id = resp.headers["x-request-id"]
            for _ in range(12):
                await resp.content.readline()
            resp.close()  # the client goes away after a few chunks
        rows = await settled_rows(gateway, "gone", request_id)
        month = time.strftime("%Y-%m", time.gmtime())
        spent, reserved = await gateway.counters.budget_state(f"budget:t:gone:money:month:{month}")
    assert len(rows) == 1
    row = rows[0]
    assert row.status == 499
    assert 0 < row.completion_tokens < 200  # billed for what was generated, not the full reply
    assert row.cost == row.prompt_tokens * PRICE["input_per_mtok"] + row.completion_tokens * PRICE["output_per_mtok"]
    assert (spent, reserved) == (row.cost, 0)



async def test_client_disconnect_without_a_budget_is_billed_with_the_deployments_tokenizer(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    # No budget: nothing reserved, so no tokenizer was chosen at admission. The
    # stream's text must still be counted as the deployment counts it (cl100k for
    # an OpenAI upstream), not by a per-delta byte estimate that rounds every
    # one-word delta up to two tokens.
    raw = {
        "deployments": [{
            "name": "d", "provider": "openai", "base_url": fake_upstream.url, "model": "fake-model", "price": PRICE,
            "options": {"extra_headers": {"x-fake-chunks": "20", "x-fake-chunk-delay-ms": "40"}},
        }],
        "models": [{"alias": "free", "deployments": ["d"]}],
        "tenants": [{"id": "nobudget", "keys": [{"id": "k", "hash": hash_api_key(KEY)}]}],
        "state": {"ledger_path": str(tmp_path / "ledger.sqlite"), "ledger_spool_path": str(tmp_path / "ledger.spool")},
    }  # fmt: skip
    async with running_gateway(msgspec.convert(raw, Config)) as (base, gateway):
        body = {"model": "free", "messages": CHAT, "stream": True}
        received: list[str] = []
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"})
            request_id = resp.headers["x-request-id"]
            while len(received) < 10:
                line = await resp.content.readline()
                if line.startswith(b"data: {"):
                    delta = msgspec.json.decode(line[6:])["choices"][0]["delta"]
                    if delta.get("content"):
                        received.append(delta["content"])
            resp.close()  # the client goes away half way
        rows = await settled_rows(gateway, "nobudget", request_id)
    assert len(rows) == 1 and rows[0].status == 499
    seen = sum(map(tiktoken_count, received))
    # The gateway may have taken a delta or two more from the upstream than the client read.
    assert seen <= rows[0].completion_tokens <= seen + 4
    assert rows[0].cost == row_cost(rows[0])


async def settled_rows(gateway: Any, tenant: str, request_id: str) -> list[Any]:
    """The ledger rows of ``request_id`` once the request the client walked away from is settled."""
    for _ in range(100):
        if not gateway.pipeline.metrics.in_flight.value:
            break
        await asyncio.sleep(0.05)
    await gateway.billing.drain()
    assert gateway.ledger is not None
    await gateway.ledger.flush()
    return [r for r in await gateway.ledger.rows(tenant, EPOCH, FAR, 10) if r.request_id == request_id]


def row_cost(row: Any) -> int:
    return int(row.prompt_tokens * PRICE["input_per_mtok"] + row.completion_tokens * PRICE["output_per_mtok"])
