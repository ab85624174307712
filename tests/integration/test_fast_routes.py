"""The inference routes served past Litestar's router (``router.fast_routes``) answer as the framework's routes do."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import msgspec
import pytest

from bench.fake_upstream import FakeUpstream
from router.app import create_app
from router.fast_routes import GatewayApp
from router.gateway import Gateway
from tests.conftest import TEST_KEY, make_config
from tests.integration.gateway_server import running_gateway

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


async def _post(base: str, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    sent = {"authorization": f"Bearer {TEST_KEY}", **(headers or {})}
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}{path}", data=data, headers=sent) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


def test_the_app_is_the_gateway_app(fake_upstream: FakeUpstream) -> None:
    app = create_app(make_config(fake_upstream.url))
    assert isinstance(app, GatewayApp)
    # Still registered with Litestar: the OpenAPI document names them.
    paths = {route.path for route in app.routes}
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"} <= paths


async def test_served_answers_and_refusals_keep_their_shapes(fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sluicegate.access")
    config = make_config(fake_upstream.url)
    async with running_gateway(config) as (base, gateway):
        status, headers, body = await _post(base, "/v1/chat/completions", CHAT)
        assert status == 200 and headers["content-type"] == "application/json"
        assert headers["x-sluicegate-deployment"] and float(headers["x-sluicegate-overhead-ms"]) >= 0
        assert msgspec.json.decode(body)["object"] == "chat.completion"

        status, headers, body = await _post(base, "/v1/chat/completions", {**CHAT, "stream": True})
        assert status == 200 and headers["content-type"] == "text/event-stream"
        assert body.rstrip().endswith(b"data: [DONE]")

        status, _, body = await _post(base, "/v1/embeddings", {"model": "fake-model", "input": "hi"})
        assert status == 200 and msgspec.json.decode(body)["object"] == "list"

        # Refusals: the OpenAI error shape, the status the framework's handler gave.
        status, _, body = await _post(base, "/v1/chat/completions", CHAT, {"authorization": "Bearer sk-wrong"})
        assert status == 401 and msgspec.json.decode(body)["error"]["code"] == "invalid_api_key"
        status, _, body = await _post(base, "/v1/chat/completions", b"{not json")
        assert status == 400 and msgspec.json.decode(body)["error"]["type"] == "invalid_request_error"
        status, _, body = await _post(base, "/v1/chat/completions", {**CHAT, "model": "no-such-model"})
        assert status == 404 and msgspec.json.decode(body)["error"]["code"] == "model_not_found"
        status, _, body = await _post(base, "/v1/chat/completions", b"x" * (config.server.max_body_bytes + 1))
        assert status == 413
        status, headers, body = await _post(base, "/v1/chat/completions", {**CHAT, "model": "ratelimited"})
        assert status == 429 and "retry-after" in headers

        # Other methods and paths still go through the framework's router.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"}) as resp:
                assert resp.status == 405
                assert "error" in msgspec.json.decode(await resp.read())
            async with http.get(f"{base}/v1/models", headers={"authorization": f"Bearer {TEST_KEY}"}) as resp:
                assert resp.status == 200

        refused = [r for r in caplog.records if r.name == "sluicegate.access" and getattr(r, "status", None) == 401]
        assert refused, "a request refused before the pipeline has its access-log line"
        assert getattr(refused[-1], "route", None) == "/v1/chat/completions"


async def test_an_unexpected_failure_is_a_500_in_the_error_shape_logged_by_type(
    fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: Any, **__: Any) -> Any:
        raise ValueError("a message that quotes sk-secret-value")

    async with running_gateway(make_config(fake_upstream.url)) as (base, gateway):
        assert isinstance(gateway, Gateway)
        monkeypatch.setattr(gateway, "authenticate", broken)
        with caplog.at_level(logging.ERROR, logger="sluicegate"):
            status, _, body = await _post(base, "/v1/chat/completions", CHAT)
    assert status == 500
    assert msgspec.json.decode(body)["error"]["type"] == "server_error"
    assert b"sk-secret-value" not in body
    assert any("ValueError" in r.getMessage() for r in caplog.records)
    assert all("sk-secret-value" not in r.getMessage() for r in caplog.records)
