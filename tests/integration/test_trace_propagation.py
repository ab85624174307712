"""Every HTTP engine sends the request's W3C trace context upstream (``traceparent``, ``tracestate``), and nothing without one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bench.fake_upstream import FakeUpstream
from serving.base import Engine, EngineRequest, EngineSpec
from serving.registry import build_engine, parse_options
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.gemini_server import API_KEY as GEMINI_KEY
from tests.fakes.gemini_server import FakeGemini

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACESTATE = "congo=t61rcWkgMzE"


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def fake_gemini() -> AsyncIterator[FakeGemini]:
    server = FakeGemini()
    await server.start()
    yield server
    await server.close()


async def _engine(provider: str, base_url: str, api_key: str | None, options: dict[str, Any] | None = None) -> Engine:
    spec = EngineSpec(
        name=f"d-{provider}", provider=provider, model="m", base_url=base_url, api_key=api_key, options=parse_options(provider, options)
    )
    engine = build_engine(spec)
    await engine.start()
    return engine


def _request(kind: Any, model: str, *, stream: bool = False, traced: bool = True) -> EngineRequest:
    body: dict[str, Any] = (
        {"model": model, "input": ["hello"]} if kind == "embedding" else {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
    )
    request = EngineRequest(kind=kind, body=body, request_id=f"r-{kind}-{stream}", stream=stream)
    if traced:
        request.traceparent, request.tracestate = TRACEPARENT, TRACESTATE
    return request


async def _drive(engine: Engine, request: EngineRequest) -> None:
    if request.stream:
        async for _ in engine.stream(request):
            pass
    elif request.kind == "embedding":
        await engine.embed(request)
    else:
        await engine.generate(request)


def _carried(headers: dict[str, str]) -> tuple[str | None, str | None]:
    lowered = {k.lower(): v for k, v in headers.items()}
    return lowered.get("traceparent"), lowered.get("tracestate")


@pytest.mark.parametrize("provider", ["openai", "azure"])
async def test_openai_and_azure(provider: str, fake_upstream: FakeUpstream) -> None:
    if provider == "openai":
        engine = await _engine("openai", fake_upstream.url, "sk-upstream")
    else:
        engine = await _engine("azure", fake_upstream.url.removesuffix("/v1"), "azure-key", {"deployment": "gpt"})
    fake_upstream.requests.clear()
    try:
        for request in (_request("chat", "fake-model"), _request("chat", "fake-model", stream=True), _request("embedding", "fake-model")):
            await _drive(engine, request)
        await _drive(engine, _request("chat", "fake-model", traced=False))
    finally:
        await engine.close()
    carried = [_carried(r["headers"]) for r in fake_upstream.requests if r["method"] == "POST"]
    assert carried == [(TRACEPARENT, TRACESTATE)] * 3 + [(None, None)]


async def test_anthropic(fake_anthropic: FakeAnthropic) -> None:
    engine = await _engine("anthropic", fake_anthropic.base_url, fake_anthropic.api_key)
    try:
        await _drive(engine, _request("chat", "claude-text"))
        await _drive(engine, _request("chat", "claude-text", stream=True))
        await _drive(engine, _request("chat", "claude-text", traced=False))
    finally:
        await engine.close()
    assert [_carried(r.headers) for r in fake_anthropic.requests] == [(TRACEPARENT, TRACESTATE)] * 2 + [(None, None)]


async def test_gemini(fake_gemini: FakeGemini) -> None:
    engine = await _engine("gemini", fake_gemini.base_url, GEMINI_KEY)
    try:
        await _drive(engine, _request("chat", "gemini-2.5-flash"))
        await _drive(engine, _request("chat", "gemini-2.5-flash", stream=True))
        await _drive(engine, _request("embedding", "gemini-embedding-001"))
        await _drive(engine, _request("chat", "gemini-2.5-flash", traced=False))
    finally:
        await engine.close()
    assert [_carried(r.headers) for r in fake_gemini.requests] == [(TRACEPARENT, TRACESTATE)] * 3 + [(None, None)]
