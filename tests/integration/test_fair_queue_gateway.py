"""The alias queue in a running gateway: a flooding tenant neither starves another nor raises its latency much."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import msgspec

from bench.fake_upstream import FakeUpstream
from core.config import Config
from router.auth import hash_api_key
from tests.integration.gateway_server import running_gateway

KEYS = {"heavy": "sk-queue-heavy-0123456789", "light": "sk-queue-light-0123456789"}
SERVICE_S = 0.2


def _config(upstream: str) -> Config:
    raw = {
        "server": {"log_level": "warning"},
        "deployments": [
            {
                "name": "slow", "provider": "openai", "base_url": upstream, "model": "fake-slow",
                "options": {"extra_headers": {"x-fake-delay-ms": str(int(SERVICE_S * 1000))}},
            }
        ],
        "models": [{"alias": "queued", "deployments": ["slow"], "max_concurrent": 4}],
        "tenants": [{"id": t, "keys": [{"id": f"{t}-k", "hash": hash_api_key(k)}]} for t, k in KEYS.items()],
        "state": {"ledger": "off"},
    }
    return msgspec.convert(raw, Config)


async def _call(http: aiohttp.ClientSession, base: str, tenant: str) -> float:
    started = time.perf_counter()
    body = {"model": "queued", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with http.post(f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEYS[tenant]}"}) as r:
        assert r.status == 200, await r.text()
        await r.read()
    return time.perf_counter() - started


async def test_a_light_tenant_is_served_within_a_request_while_another_floods(fake_upstream: FakeUpstream) -> None:
    async with running_gateway(_config(fake_upstream.url)) as (base, _):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            await _call(http, base, "light")  # light has been seen
            flood = [asyncio.create_task(_call(http, base, "heavy")) for _ in range(24)]
            await asyncio.sleep(SERVICE_S / 2)
            light = [await _call(http, base, "light") for _ in range(3)]
            heavy = await asyncio.gather(*flood)
    # a slot was kept free: the light tenant never waited behind a heavy request
    assert max(light) < SERVICE_S * 1.6
    # the heavy tenant still got everything served, on the slots left to it
    assert len(heavy) == 24 and max(heavy) > SERVICE_S * 3
