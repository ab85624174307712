"""The gateway in front of a real (fake) upstream over TCP: fallback, streaming, errors."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest

from bench.fake_upstream import FakeUpstream
from router.gateway import Gateway
from tests.conftest import OTHER_KEY, TEST_KEY, make_config
from tests.integration.gateway_server import running_gateway

AUTH = {"authorization": f"Bearer {TEST_KEY}"}
CHAT = {"messages": [{"role": "user", "content": "hello there"}]}


@pytest.fixture(scope="module")
async def gateway(fake_upstream: FakeUpstream) -> AsyncIterator[tuple[str, Gateway]]:
    import os

    os.environ["SG_TEST_UPSTREAM_KEY"] = "sk-deployment-own-key"
    config = make_config(fake_upstream.url)
    deployments = [msgspec.to_builtins(d) for d in config.deployments]
    deployments.append(
        {
            "name": "keyed", "provider": "openai", "base_url": fake_upstream.url, "model": "fake-model",
            "api_key": {"env": "SG_TEST_UPSTREAM_KEY"},
            "options": {"extra_headers": {"x-fake-chunks": "40", "x-fake-chunk-delay-ms": "50"}},
        }
    )
    models = [msgspec.to_builtins(m) for m in config.models] + [{"alias": "keyed", "deployments": ["keyed"]}]
    config = make_config(fake_upstream.url, deployments=deployments, models=models)
    async with running_gateway(config) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _post(http: aiohttp.ClientSession, base: str, model: str, **extra: object) -> tuple[int, dict, dict]:
    async with http.post(f"{base}/v1/chat/completions", json={"model": model, **CHAT, **extra}, headers=AUTH) as resp:
        return resp.status, await resp.json(content_type=None), {k.lower(): v for k, v in resp.headers.items()}


async def _stream_events(http: aiohttp.ClientSession, base: str, model: str, **extra: object) -> list[bytes]:
    body = {"model": model, "stream": True, **CHAT, **extra}
    async with http.post(f"{base}/v1/chat/completions", json=body, headers=AUTH) as resp:
        assert resp.status == 200
        raw = await resp.read()
    return [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]


def _recorded_models(upstream: FakeUpstream) -> list[str]:
    return [r["json"]["model"] for r in upstream.requests if isinstance(r.get("json"), dict)]


async def test_started_gateway_applies_its_gc_thresholds(gateway) -> None:
    _, gw = gateway
    assert gc.get_threshold() == tuple(gw.config.server.gc_thresholds) == (10_000, 20, 20)


async def test_non_stream_relays_body_and_usage(gateway, http) -> None:
    base, gw = gateway
    status, body, headers = await _post(http, base, "fake-model")
    assert status == 200
    assert body["object"] == "chat.completion"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert headers["x-sluicegate-deployment"] == "normal"
    assert len(headers["x-request-id"]) == 24


async def test_fallback_to_next_deployment_on_503(gateway, http, fake_upstream) -> None:
    base, _ = gateway
    fake_upstream.requests.clear()
    status, body, headers = await _post(http, base, "fallback")
    assert status == 200
    assert headers["x-sluicegate-deployment"] == "normal"
    assert _recorded_models(fake_upstream) == ["error_503", "fake-model"]


async def test_upstream_4xx_is_relayed_without_fallback(gateway, http, fake_upstream) -> None:
    base, _ = gateway
    fake_upstream.requests.clear()
    status, body, _ = await _post(http, base, "no-fallback-on-4xx")
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert _recorded_models(fake_upstream) == ["error_400"]


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [("broken", 502, "bad_gateway"), ("unreachable", 502, "upstream_unreachable"), ("slow", 504, "upstream_timeout")],
)
async def test_upstream_failures_map_to_gateway_errors(gateway, http, model, status, code) -> None:
    base, _ = gateway
    got, body, _ = await _post(http, base, model)
    assert got == status
    assert body["error"]["code"] == code
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_rate_limit_carries_retry_after(gateway, http) -> None:
    base, _ = gateway
    status, body, headers = await _post(http, base, "ratelimited")
    assert status == 429
    assert headers["retry-after"] == "1"
    assert body["error"]["type"] == "rate_limit_error"


async def test_stream_relays_chunks_and_done(gateway, http) -> None:
    base, _ = gateway
    events = await _stream_events(http, base, "fake-model")
    assert events[-1] == b"[DONE]"
    chunks = [msgspec.json.decode(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    # The gateway always asks upstream for usage but drops it when the client did not ask.
    assert all(c["choices"] for c in chunks)


async def test_stream_usage_chunk_when_asked(gateway, http) -> None:
    base, _ = gateway
    events = await _stream_events(http, base, "fake-model", stream_options={"include_usage": True})
    last = msgspec.json.decode(events[-2])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] > 0


async def test_error_after_first_byte_is_an_event_and_never_retried(gateway, http, fake_upstream) -> None:
    base, _ = gateway
    fake_upstream.requests.clear()
    events = await _stream_events(http, base, "midstream")
    assert b"[DONE]" not in events
    assert msgspec.json.decode(events[-1])["error"]["type"] == "upstream_error"
    assert len(events) > 1  # some content went out first
    # "midstream" has a healthy second deployment; it must not have been tried.
    assert _recorded_models(fake_upstream) == ["error_midstream"]


async def test_upstream_disconnect_mid_stream_ends_with_error_event(gateway, http) -> None:
    base, _ = gateway
    events = await _stream_events(http, base, "dropper")
    assert b"[DONE]" not in events
    assert "error" in msgspec.json.decode(events[-1])


async def test_stream_failure_before_first_byte_is_http_error(gateway, http) -> None:
    base, _ = gateway
    body = {"model": "broken", "stream": True, **CHAT}
    async with http.post(f"{base}/v1/chat/completions", json=body, headers=AUTH) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "bad_gateway"


async def test_no_usage_upstream_still_serves(gateway, http) -> None:
    base, _ = gateway
    status, body, _ = await _post(http, base, "no-usage")
    assert status == 200 and "usage" not in body
    events = await _stream_events(http, base, "no-usage", stream_options={"include_usage": True})
    assert events[-1] == b"[DONE]"


async def test_deployment_key_replaces_client_key(gateway, http, fake_upstream) -> None:
    base, _ = gateway
    fake_upstream.requests.clear()
    status, _, _ = await _post(http, base, "keyed", max_tokens=2)
    assert status == 200
    seen = fake_upstream.requests[-1]["headers"]
    assert seen["authorization"] == "Bearer sk-deployment-own-key"
    assert TEST_KEY not in str(fake_upstream.requests[-1])


async def test_client_disconnect_mid_stream_releases_upstream(gateway, http) -> None:
    base, gw = gateway
    engine = gw.engines["keyed"]
    body = {"model": "keyed", "stream": True, **CHAT}
    resp = await http.post(f"{base}/v1/chat/completions", json=body, headers=AUTH)
    await resp.content.readline()
    assert engine.load().running == 1
    resp.close()  # the client goes away mid-stream (40 chunks x 50 ms)
    for _ in range(50):
        if engine.load().running == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.load().running == 0


async def test_tenants_are_identified(gateway, http) -> None:
    base, _ = gateway
    body = {"model": "fake-model", **CHAT}
    async with http.post(f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {OTHER_KEY}"}) as r:
        assert r.status == 200
    async with http.post(f"{base}/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-nope"}) as r:
        assert r.status == 401


async def test_body_over_limit_is_413(gateway, http) -> None:
    base, _ = gateway
    big = b'{"model":"fake-model","messages":[{"role":"user","content":"' + b"x" * (9 * 1024 * 1024) + b'"}]}'
    async with http.post(f"{base}/v1/chat/completions", data=big, headers=AUTH) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "request_too_large"


async def test_metrics_count_requests(gateway, http) -> None:
    base, _ = gateway
    await _post(http, base, "fake-model")
    assert (await _post(http, base, "broken"))[0] == 502  # its own upstream error, whatever ran before
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    assert 'sluicegate_requests_total{model="fake-model",route="chat",status="200"}' in text
    assert "sluicegate_request_duration_seconds_bucket" in text
    assert 'sluicegate_upstream_errors_total{code="bad_gateway",deployment="broken"}' in text


def _in_flight(text: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith("sluicegate_in_flight_requests ")]
    return float(line.split()[1])


async def test_metrics_show_the_requests_in_flight_while_they_are_served(fake_upstream: FakeUpstream) -> None:
    held = {"name": "held", "provider": "openai", "base_url": fake_upstream.url, "model": "fake-slow",
            "options": {"extra_headers": {"x-fake-delay-ms": "2500"}}}  # fmt: skip
    config = make_config(fake_upstream.url, deployments=[held], models=[{"alias": "held", "deployments": ["held"]}])
    async with running_gateway(config) as (base, _), aiohttp.ClientSession() as http:
        async with http.get(f"{base}/metrics") as resp:
            assert _in_flight(await resp.text()) == 0
        calls = [asyncio.create_task(_post(http, base, "held")) for _ in range(3)]
        seen = []
        for _ in range(40):  # until all three are in (each is held upstream for 2.5 s)
            await asyncio.sleep(0.05)
            async with http.get(f"{base}/metrics") as resp:
                seen.append(_in_flight(await resp.text()))
            if seen[-1] == 3:
                break
        assert seen[-1] == 3 and not any(calls_done.done() for calls_done in calls), seen
        assert [status for status, _, _ in await asyncio.gather(*calls)] == [200, 200, 200]
        async with http.get(f"{base}/metrics") as resp:
            assert _in_flight(await resp.text()) == 0


async def test_health_and_readiness(gateway, http) -> None:
    base, _ = gateway
    async with http.get(f"{base}/healthz") as resp:
        assert resp.status == 200
    async with http.get(f"{base}/readyz") as resp:
        body = await resp.json()
        assert resp.status == 200 and body["status"] == "ready"


async def test_failing_deployment_trips_breaker_and_traffic_falls_back(fake_upstream: FakeUpstream) -> None:
    config = make_config(
        fake_upstream.url,
        resilience={"breaker_consecutive_failures": 3, "breaker_open_s": 60, "backoff_base_s": 0},
    )
    async with running_gateway(config) as (base, gw), aiohttp.ClientSession() as http:
        fake_upstream.requests.clear()
        for _ in range(10):
            status, _, headers = await _post(http, base, "fallback")
            assert status == 200 and headers["x-sluicegate-deployment"] == "normal"
        # Three 503s opened the circuit; after that the failing deployment is skipped.
        assert _recorded_models(fake_upstream).count("error_503") == 3
        assert gw.deployments["overloaded"].breaker.state.value == "open"
        async with http.get(f"{base}/metrics") as resp:
            text = await resp.text()
        assert 'sluicegate_upstream_errors_total{code="bad_gateway",deployment="overloaded"} 3.0' in text


async def test_retry_after_is_honoured_before_retrying(fake_upstream: FakeUpstream) -> None:
    config = make_config(fake_upstream.url, resilience={"max_attempts": 2, "max_retry_after_s": 5})
    async with running_gateway(config) as (base, _), aiohttp.ClientSession() as http:
        fake_upstream.requests.clear()
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, _, headers = await _post(http, base, "ratelimited")
        elapsed = loop.time() - started
        assert status == 429 and headers["retry-after"] == "1"
        # Two attempts, the second after the upstream's Retry-After of 1 s.
        assert _recorded_models(fake_upstream) == ["error_429", "error_429"]
        assert elapsed >= 1.0


async def test_long_retry_after_is_not_waited_out(fake_upstream: FakeUpstream) -> None:
    config = make_config(fake_upstream.url, resilience={"max_retry_after_s": 0.5})
    async with running_gateway(config) as (base, _), aiohttp.ClientSession() as http:
        fake_upstream.requests.clear()
        status, _, headers = await _post(http, base, "ratelimited")
        assert status == 429 and headers["retry-after"] == "1"
        assert _recorded_models(fake_upstream) == ["error_429"]


async def test_cooling_deployment_answers_429_not_503(fake_upstream: FakeUpstream) -> None:
    config = make_config(fake_upstream.url, resilience={"max_retry_after_s": 0})
    async with running_gateway(config) as (base, _), aiohttp.ClientSession() as http:
        await _post(http, base, "ratelimited")
        fake_upstream.requests.clear()
        status, body, headers = await _post(http, base, "ratelimited")
        # Still inside the upstream's Retry-After: refused without calling it, as a 429.
        assert status == 429 and body["error"]["type"] == "rate_limit_error"
        assert headers["retry-after"] == "1"
        assert _recorded_models(fake_upstream) == []
