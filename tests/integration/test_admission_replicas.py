"""Admission across replicas: one global limit in Redis, and explicit behaviour when Redis goes away."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from bench.fake_upstream import FakeUpstream
from core.config import Config
from router.auth import hash_api_key
from tests.integration.gateway_server import free_port, running_gateway, wait_healthy
from tests.integration.test_ledger_postgres_outage import TcpProxy

REDIS_URL = "redis://127.0.0.1:6379/0"
KEY = "sk-admission-0123456789"


def _config(upstream: str, tenant: str, limits: dict[str, int], redis_url: str = REDIS_URL, **extra: Any) -> dict[str, Any]:
    return {
        "server": {"log_level": "warning"},
        "deployments": [{"name": "d", "provider": "openai", "base_url": upstream, "model": "fake-slow",
                         "options": {"extra_headers": {"x-fake-delay-ms": "300"}}}],
        "models": [{"alias": "m", "deployments": ["d"]}],
        "tenants": [{"id": tenant, "keys": [{"id": "k", "hash": hash_api_key(KEY)}], "limits": limits, **extra}],
        "state": {"counters": "redis", "redis_url": redis_url, "ledger": "off"},
    }


@pytest.fixture
def replicas(fake_upstream: FakeUpstream, tenant: str, tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def launch(limits: dict[str, int]) -> list[str]:
        bases = []
        for i in range(2):
            port = free_port()
            raw = _config(fake_upstream.url, tenant, limits)
            raw["server"]["port"] = port
            path = tmp_path / f"replica{i}.yaml"
            path.write_bytes(msgspec.yaml.encode(raw))
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
            with (tmp_path / f"replica{i}.log").open("wb") as log:
                started.append(subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(path)],
                                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path))
            bases.append(f"http://127.0.0.1:{port}")
        return bases

    yield launch
    for process in started:
        process.terminate()
    for process in started:
        process.wait(timeout=30)


async def _burst(bases: list[str], per_replica: int) -> list[tuple[int, str | None]]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(base: str) -> tuple[int, str | None]:
            async with http.post(f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}) as r:
                return r.status, r.headers.get("retry-after")

        return await asyncio.gather(*(one(b) for b in bases for _ in range(per_replica)))


def _clear_of_minute_boundary() -> None:
    # Fixed windows are aligned to the minute; a burst straddling two windows would see two budgets.
    into = time.time() % 60
    if into > 50:
        time.sleep(61 - into)


async def test_two_replicas_enforce_one_global_rpm(replicas: Any) -> None:
    bases = replicas({"rpm": 25})
    await asyncio.gather(*(wait_healthy(b) for b in bases))
    _clear_of_minute_boundary()
    results = await _burst(bases, 40)
    assert sum(1 for status, _ in results if status == 200) == 25
    refused = [(s, r) for s, r in results if s != 200]
    assert all(s == 429 and r is not None and int(r) >= 1 for s, r in refused)


async def test_two_replicas_enforce_one_global_concurrency_limit(replicas: Any) -> None:
    bases = replicas({"max_concurrent": 3})
    await asyncio.gather(*(wait_healthy(b) for b in bases))
    # Every request holds its slot for the upstream's 300 ms, so at most 3 of this burst fit.
    results = await _burst(bases, 10)
    assert sum(1 for status, _ in results if status == 200) == 3
    # Slots come back when requests finish.
    assert [s for s, _ in await _burst(bases[:1], 1)] == [200]


async def test_redis_down_mid_run_gives_the_configured_behaviour(fake_upstream: FakeUpstream, tenant: str) -> None:
    proxy = TcpProxy("127.0.0.1", 6379)
    await proxy.start()
    limited = _config(fake_upstream.url, tenant, {"rpm": 1000}, redis_url=f"redis://127.0.0.1:{proxy.port}/0")
    budgeted = f"{tenant}-b"
    limited["tenants"].append({"id": budgeted, "keys": [{"id": "kb", "hash": hash_api_key(KEY + "b")}],
                               "budgets": [{"kind": "tokens", "period": "daily", "limit": 10**6}]})
    config = msgspec.convert(limited, Config)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    try:
        async with running_gateway(config) as (base, _), aiohttp.ClientSession() as http:

            async def ask(key: str) -> tuple[int, dict[str, Any], str | None]:
                async with http.post(f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}) as r:
                    return r.status, await r.json(), r.headers.get("retry-after")

            assert (await ask(KEY))[0] == 200 and (await ask(KEY + "b"))[0] == 200
            await proxy.stop()  # Redis is gone
            started = time.monotonic()
            status, _, _ = await ask(KEY)
            assert status == 200  # rate limits fail open by default
            status, answer, retry_after = await ask(KEY + "b")
            assert status == 503 and retry_after == "1"  # budgets fail closed by default
            assert answer["error"]["type"] == "server_error"
            assert time.monotonic() - started < 10  # no hang
            await proxy.start()
            for _ in range(50):
                if (await ask(KEY + "b"))[0] == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("budgets did not recover when Redis came back")
    finally:
        if proxy._server is not None:
            await proxy.stop()
