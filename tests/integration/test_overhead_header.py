"""What the gateway adds to a request, as it reports it: ``x-sluicegate-overhead-ms`` and ``sluicegate_overhead_seconds``.

The fake upstream waits 150 ms before answering: the request takes at least
that long, and the overhead the gateway reports leaves that wait out.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bench.fake_upstream import FakeUpstream
from router.gateway import Gateway
from tests.conftest import TEST_KEY, make_config
from tests.integration.gateway_server import running_gateway

DELAY_MS = 150


@pytest.fixture
async def gateway(fake_upstream: FakeUpstream) -> AsyncIterator[tuple[str, Gateway]]:
    async with running_gateway(make_config(fake_upstream.url)) as running:
        yield running


def _count(gateway: Gateway, mode: str) -> float:
    return gateway.metrics.registry.get_sample_value("sluicegate_overhead_seconds_count", {"mode": mode}) or 0.0


@pytest.mark.parametrize("stream", [False, True])
async def test_the_overhead_leaves_the_upstream_wait_out(gateway: tuple[str, Gateway], fake_upstream: FakeUpstream, stream: bool) -> None:
    base, gw = gateway
    mode = "stream" if stream else "unary"
    before = _count(gw, mode)
    fake_upstream.set_behavior("slow", delay_ms=DELAY_MS)
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    try:
        async with aiohttp.ClientSession() as http:
            started = time.perf_counter()
            async with http.post(f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {TEST_KEY}"}) as r:
                assert r.status == 200
                overhead_ms = float(r.headers["x-sluicegate-overhead-ms"])
                await r.read()
            elapsed_ms = (time.perf_counter() - started) * 1000
    finally:
        fake_upstream.set_behavior(None)
    assert elapsed_ms >= DELAY_MS
    assert 0 < overhead_ms < DELAY_MS / 2  # the gateway's own part: the upstream's wait is not in it
    assert _count(gw, mode) == before + 1


async def test_a_refusal_carries_no_overhead_header(gateway: tuple[str, Gateway]) -> None:
    base, _ = gateway
    async with aiohttp.ClientSession() as http:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(f"{base}/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-wrong"}) as r:
            assert r.status == 401
            assert "x-sluicegate-overhead-ms" not in r.headers
