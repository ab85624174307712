"""One tenant's failing requests must not take a model offline for every tenant.

The gateway in front of the fake upstream, two tenants. Tenant A's prompt picks
the fake's behaviour (``fake-behavior:error_500``): a failure that request
causes by itself, every time it is retried. A really-down upstream (connection
refused) must still open its breaker whoever notices.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from bench.fake_replies import PROMPT_DIRECTIVE
from bench.fake_upstream import FakeUpstream
from router.gateway import Gateway
from serving.health import CircuitBreaker, State
from tests.conftest import OTHER_KEY, TEST_KEY, make_config
from tests.integration.gateway_server import running_gateway

TENANT_A = {"authorization": f"Bearer {TEST_KEY}"}
TENANT_B = {"authorization": f"Bearer {OTHER_KEY}"}
HOSTILE = f"{PROMPT_DIRECTIVE}error_500 an answer the upstream cannot give"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@asynccontextmanager
async def gateway(upstream: str, **resilience: Any) -> AsyncIterator[tuple[str, Gateway, aiohttp.ClientSession]]:
    def dep(name: str, model: str = "fake-model", **extra: Any) -> dict[str, Any]:
        return {"name": name, "provider": "openai", "base_url": upstream, "model": model, **extra}

    down = f"http://127.0.0.1:{closed_port()}/v1"
    config = make_config(
        upstream,
        deployments=[
            dep("shared"),
            dep("backup"),
            dep("down", base_url=down, timeouts={"connect_s": 1}),
            dep("overloaded", "error_503"),
            dep("rejects", "error_400"),
        ],
        models=[
            {"alias": "shared", "deployments": ["shared"]},
            {"alias": "down-only", "deployments": ["down"]},
            {"alias": "down-with-backup", "deployments": ["down", "backup"]},
            {"alias": "overloaded", "deployments": ["overloaded"]},
            {"alias": "rejects", "deployments": ["rejects"]},
        ],
        resilience={"backoff_base_s": 0, "backoff_max_s": 0, **resilience},
    )
    async with running_gateway(config) as (base, gw), aiohttp.ClientSession() as http:
        yield base, gw, http


async def post(
    http: aiohttp.ClientSession,
    base: str,
    auth: dict[str, str],
    model: str,
    content: str = "hello",
    stream: bool = False,
) -> tuple[int, dict[str, Any]]:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}
    async with http.post(f"{base}/v1/chat/completions", json=body, headers=auth) as resp:
        if stream and resp.status == 200:
            await resp.read()
            return 200, {}
        return resp.status, await resp.json(content_type=None)


def with_clock(gw: Gateway, name: str, clock: Clock) -> CircuitBreaker:
    deployment = gw.deployments[name]
    deployment.breaker = CircuitBreaker(deployment.breaker.settings, clock)
    return deployment.breaker


def hostile_attempts(upstream: FakeUpstream) -> int:
    return sum(1 for r in upstream.requests if HOSTILE in str(r.get("json")))


async def test_one_tenants_failing_requests_leave_the_model_to_the_others(fake_upstream: FakeUpstream) -> None:
    async with gateway(fake_upstream.url) as (base, gw, http):
        fake_upstream.requests.clear()
        for stream in (False, True):
            status, body = await post(http, base, TENANT_A, "shared", HOSTILE, stream)
            assert status == 502 and body["error"]["code"] == "bad_gateway"
        for stream in (False, True, False):
            status, _ = await post(http, base, TENANT_B, "shared", stream=stream)
            assert status == 200
        assert gw.deployments["shared"].breaker.state is State.CLOSED
        # Each was retried (3 attempts: 6 failures, over the threshold of 5) and counted once.
        assert hostile_attempts(fake_upstream) == 6


async def test_the_half_open_probe_cannot_be_spent_by_a_failing_request(fake_upstream: FakeUpstream) -> None:
    async with gateway(fake_upstream.url) as (base, gw, http):
        clock = Clock()
        breaker = with_clock(gw, "shared", clock)
        breaker.force_open()  # an outage, now over
        clock.now += breaker.settings.open_s
        status, _ = await post(http, base, TENANT_A, "shared", HOSTILE)
        assert status == 502
        assert breaker.state is not State.OPEN
        status, _ = await post(http, base, TENANT_B, "shared")
        assert status == 200
        assert breaker.state is State.CLOSED


async def test_client_errors_never_open_the_breaker_under_active_health_checks(fake_upstream: FakeUpstream) -> None:
    async with gateway(fake_upstream.url, health_check_interval_s=0.05) as (base, gw, http):
        fake_upstream.requests.clear()
        for _ in range(6):
            status, body = await post(http, base, TENANT_A, "rejects")
            assert status == 400 and body["error"]["type"] == "invalid_request_error"
        breaker = gw.deployments["rejects"].breaker
        # Wait for health checks to run after the 400s (or, before the fix, to open the breaker).
        for _ in range(250):
            probes = sum(1 for r in fake_upstream.requests if r["method"] == "GET" and r["path"] == "/v1/models")
            if probes >= 2 or breaker.state is State.OPEN:
                break
            await asyncio.sleep(0.02)
        assert breaker.state is State.CLOSED
        status, _ = await post(http, base, TENANT_B, "rejects")
        assert status == 400


async def test_a_request_retried_on_one_deployment_counts_once(fake_upstream: FakeUpstream) -> None:
    async with gateway(fake_upstream.url, breaker_consecutive_failures=3) as (base, gw, http):
        fake_upstream.requests.clear()
        status, body = await post(http, base, TENANT_A, "overloaded")
        assert status == 502 and body["error"]["code"] == "bad_gateway"
        assert [r["json"]["model"] for r in fake_upstream.requests] == ["error_503"] * 3
        breaker = gw.deployments["overloaded"].breaker
        assert breaker.state is State.CLOSED
        # A 503 says the deployment is down for everyone: three requests in a row open it.
        for _ in range(2):
            await post(http, base, TENANT_A, "overloaded")
        assert breaker.state is State.OPEN
        status, body = await post(http, base, TENANT_B, "overloaded")
        assert status == 503 and body["error"]["code"] == "no_healthy_deployment"


async def test_a_really_down_upstream_still_opens_and_traffic_falls_back(fake_upstream: FakeUpstream) -> None:
    async with gateway(fake_upstream.url, breaker_consecutive_failures=3) as (base, gw, http):
        clock = Clock()
        breaker = with_clock(gw, "down", clock)
        # One tenant alone notices: a refused connection is not its request's doing.
        for _ in range(3):
            status, _ = await post(http, base, TENANT_A, "down-with-backup")
            assert status == 200
        assert breaker.state is State.OPEN
        async with http.get(f"{base}/metrics") as resp:
            text = await resp.text()
        assert 'sluicegate_upstream_errors_total{code="upstream_unreachable",deployment="down"} 3.0' in text
        status, _ = await post(http, base, TENANT_B, "down-with-backup")
        assert status == 200
        status, body = await post(http, base, TENANT_B, "down-only")
        assert status == 503 and body["error"]["code"] == "no_healthy_deployment"
        # Once due, the health probe finds it still down: open again, no request sent.
        clock.now += breaker.settings.open_s
        status, body = await post(http, base, TENANT_B, "down-only")
        assert status == 503 and body["error"]["code"] == "no_healthy_deployment"
        assert breaker.state is State.OPEN and not breaker.probe_due()
        async with http.get(f"{base}/metrics") as resp:
            assert 'code="upstream_unreachable",deployment="down"} 3.0' in await resp.text()



async def test_readiness_answers_at_once_while_an_upstream_stays_silent(fake_upstream: FakeUpstream) -> None:
    # Accepts connections (the kernel's backlog) and never answers: the health probe hangs.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        dep = {"name": "silent", "provider": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "m"}
        config = make_config(fake_upstream.url, deployments=[dep], models=[{"alias": "m", "deployments": ["silent"]}])
        async with running_gateway(config) as (base, _), aiohttp.ClientSession() as http:
            # Well inside the probe's own 5 s timeout.
            async with asyncio.timeout(3):
                async with http.get(f"{base}/readyz") as resp:
                    body = await resp.json()
            assert resp.status == 200 and body["deployments"] == {"silent": False}
