"""What every HTTP engine (OpenAI, Azure, Anthropic) shares through serving.http_transport.

Health means "the upstream is up", asked of the upstream itself, whatever requests
have failed; Retry-After is read the same way by every engine, HTTP dates included.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from bench import fake_replies
from bench.fake_upstream import FakeUpstream
from core.errors import GatewayError, UpstreamRateLimited, UpstreamRejected
from serving.base import Engine, EngineRequest, EngineSpec
from serving.registry import build_engine, parse_options
from tests.fakes import anthropic_server
from tests.fakes.anthropic_server import FakeAnthropic

ENGINES = ["openai", "azure", "anthropic"]


@dataclass
class Upstream:
    engine: Engine
    # body model --> what the upstream answers: a 400, a 500, a 429 with an HTTP-date Retry-After
    rejected: str
    server_error: str
    rate_limited_by_date: str
    probes: Callable[[], int]


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic()
    await server.start()
    yield server
    await server.close()


async def start(provider: str, base_url: str, api_key: str | None, options: dict[str, Any] | None = None) -> Engine:
    spec = EngineSpec(
        name=f"http-{provider}",
        provider=provider,
        model="m",
        base_url=base_url,
        api_key=api_key,
        options=parse_options(provider, options),
    )
    engine = build_engine(spec)
    await engine.start()
    return engine


def models_listed(fake: FakeUpstream, path: str) -> Callable[[], int]:
    return lambda: sum(1 for r in fake.requests if r["method"] == "GET" and r["path"] == path)


@pytest.fixture(params=ENGINES)
async def upstream(
    request: pytest.FixtureRequest, fake_upstream: FakeUpstream, fake_anthropic: FakeAnthropic
) -> AsyncIterator[Upstream]:
    fake_upstream.requests.clear()
    if request.param == "openai":
        engine = await start("openai", fake_upstream.url, "sk-upstream")
        listed = models_listed(fake_upstream, "/v1/models")
        found = Upstream(engine, "error_400", "error_500", "error_429_date", listed)
    elif request.param == "azure":
        root = fake_upstream.url.removesuffix("/v1")
        engine = await start("azure", root, "azure-key", {"deployment": "gpt"})
        listed = models_listed(fake_upstream, "/openai/models")
        found = Upstream(engine, "error_400", "error_500", "error_429_date", listed)
    else:
        engine = await start("anthropic", fake_anthropic.base_url, fake_anthropic.api_key)
        statuses = ("claude-status-400", "claude-status-500", "claude-ratelimited-date")
        found = Upstream(engine, *statuses, lambda: fake_anthropic.model_lists)
    yield found
    await engine.close()


def chat(model: str) -> EngineRequest:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
    return EngineRequest(kind="chat", body=body, request_id="r", tenant="t")


async def test_failed_requests_do_not_make_an_engine_unhealthy(upstream: Upstream) -> None:
    # A client's "context too long", five times; then five 500s for one request each.
    for _ in range(5):
        with pytest.raises(UpstreamRejected):
            await upstream.engine.generate(chat(upstream.rejected))
    for _ in range(5):
        with pytest.raises(GatewayError):
            await upstream.engine.generate(chat(upstream.server_error))
    assert await upstream.engine.health()
    # Health was asked of the upstream itself.
    assert upstream.probes() == 1


async def test_retry_after_as_an_http_date_is_honoured(upstream: Upstream) -> None:
    with pytest.raises(UpstreamRateLimited) as caught:
        await upstream.engine.generate(chat(upstream.rate_limited_by_date))
    retry_after = caught.value.retry_after
    # The date has one-second resolution and a little time passes on the way.
    assert retry_after is not None
    assert fake_replies.RETRY_AFTER_DATE_S - 5 <= retry_after <= fake_replies.RETRY_AFTER_DATE_S
    assert anthropic_server.RETRY_AFTER_DATE_S == fake_replies.RETRY_AFTER_DATE_S


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("provider", ENGINES)
async def test_an_unreachable_upstream_is_down(provider: str) -> None:
    base = f"http://127.0.0.1:{closed_port()}"
    engine = await start(provider, base + ("/v1" if provider == "openai" else ""), "key")
    try:
        assert not await engine.health()
    finally:
        await engine.close()


async def test_the_probe_carries_the_deployments_credentials(fake_upstream: FakeUpstream) -> None:
    fake_upstream.requests.clear()
    openai = await start("openai", fake_upstream.url, "sk-upstream", {"organization": "org-1"})
    azure = await start("azure", fake_upstream.url.removesuffix("/v1"), "azure-key", {"api_version": "2024-10-21"})
    try:
        assert await openai.health() and await azure.health()
    finally:
        await openai.close()
        await azure.close()
    first, second = fake_upstream.requests
    assert first["path"] == "/v1/models"
    assert first["headers"]["authorization"] == "Bearer sk-upstream"
    assert first["headers"]["openai-organization"] == "org-1"
    assert second["path"] == "/openai/models" and second["query"] == {"api-version": "2024-10-21"}
    assert second["headers"]["api-key"] == "azure-key"


async def test_an_upstream_that_refuses_the_key_is_still_up(fake_anthropic: FakeAnthropic) -> None:
    # A key scoped away from the model list must not take the deployment out of rotation;
    # a refused key on real requests counts against the breaker as a down upstream.
    engine = await start("anthropic", fake_anthropic.base_url, "sk-ant-other")
    try:
        assert await engine.health()
    finally:
        await engine.close()
    assert fake_anthropic.model_lists == 1
