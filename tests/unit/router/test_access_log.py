"""The access log: one JSON line per request, for requests the pipeline served and for those refused before it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from bench.fake_upstream import FakeUpstream
from router.access_log import usd
from router.gateway import Gateway
from router.logs import JsonFormatter
from tests.conftest import TEST_KEY, make_config
from tests.integration.gateway_server import running_gateway

AUTH = {"authorization": f"Bearer {TEST_KEY}"}
WRONG = {"authorization": "Bearer sk-wrong-key-0123"}
CHAT_URL = "/v1/chat/completions"
Running = tuple[str, Gateway]
Session = aiohttp.ClientSession
CHAT = {"messages": [{"role": "user", "content": "hello there"}]}
FIELDS = {
    "trace_id", "request_id", "tenant", "key_id", "model", "deployment", "route", "status", "error", "stream",
    "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms", "ttft_ms", "config_version", "canary", "route_reason",
}  # fmt: skip
PRICE = {"input_per_mtok": 1_500_000, "output_per_mtok": 2_000_000}  # micro-USD per million tokens


def test_pico_dollars_print_as_exact_decimal_dollars() -> None:
    assert usd(0) == "0"
    assert usd(1) == "0.000000000001"
    assert usd(1_230_000) == "0.00000123"
    assert usd(12 * 10**12) == "12"
    assert usd(12 * 10**12 + 5 * 10**11) == "12.5"
    assert usd(-1_230_000) == "-0.00000123"


def _config(upstream: str, **server: Any) -> Any:
    config = make_config(upstream)
    deployments = [msgspec.to_builtins(d) for d in config.deployments]
    for d in deployments:
        d["price"] = PRICE
    deployments.append({
        "name": "dripping", "provider": "openai", "base_url": upstream, "model": "fake-model",
        "options": {"extra_headers": {"x-fake-chunks": "40", "x-fake-chunk-delay-ms": "50"}},
    })  # fmt: skip
    models = [msgspec.to_builtins(m) for m in config.models] + [{"alias": "dripping", "deployments": ["dripping"]}]
    return make_config(upstream, deployments=deployments, models=models, server=server)


@pytest.fixture(scope="module")
async def gateway(fake_upstream: FakeUpstream) -> AsyncIterator[tuple[str, Gateway]]:
    async with running_gateway(_config(fake_upstream.url)) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> Any:
    """The access lines logged so far in this test, as the JSON formatter writes them."""
    caplog.set_level(logging.INFO, logger="sluicegate.access")

    def lines() -> list[dict[str, Any]]:
        out = []
        for record in caplog.records:
            if record.name == "sluicegate.access":
                text = JsonFormatter().format(record)
                assert "\n" not in text
                out.append(json.loads(text))
        return out

    return lines


def _one(lines: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(lines) == 1, lines
    line = lines[0]
    assert set(line) == FIELDS | {"ts", "level", "logger", "msg"}, set(line) ^ (FIELDS | {"ts", "level", "logger", "msg"})
    assert line["logger"] == "sluicegate.access" and line["level"] == "info"
    return line


async def test_an_answered_request_is_one_line_with_its_cost(gateway: Running, http: Session, access: Any) -> None:
    base, gw = gateway
    async with http.post(f"{base}/v1/chat/completions", json={"model": "fake-model", **CHAT}, headers=AUTH) as resp:
        assert resp.status == 200
        request_id, reason = resp.headers["x-request-id"], resp.headers["x-sluicegate-route-reason"]
        usage = (await resp.json())["usage"]
    line = _one(access())
    assert line["request_id"] == request_id
    who = ("tenant-a", "key-a", "fake-model", "normal", "chat")
    assert (line["tenant"], line["key_id"], line["model"], line["deployment"], line["route"]) == who
    assert (line["status"], line["error"], line["stream"], line["ttft_ms"]) == (200, None, False, None)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    pico = usage["prompt_tokens"] * PRICE["input_per_mtok"] + usage["completion_tokens"] * PRICE["output_per_mtok"]
    assert line["cost_usd"] == usd(pico) and pico > 0
    assert line["config_version"] == gw.snapshot.version and line["route_reason"] == reason
    assert line["latency_ms"] > 0 and line["trace_id"] is None and line["canary"] is None
    assert TEST_KEY not in json.dumps(line)


async def test_a_streamed_request_has_its_time_to_first_token(gateway: Running, http: Session, access: Any) -> None:
    base, _ = gateway
    body = {"model": "fake-model", "stream": True, "stream_options": {"include_usage": True}, **CHAT}
    async with http.post(f"{base}/v1/chat/completions", json=body, headers=AUTH) as resp:
        assert resp.status == 200
        await resp.read()
    line = _one(access())
    assert (line["status"], line["stream"], line["route"]) == (200, True, "chat")
    assert 0 < line["ttft_ms"] <= line["latency_ms"] and line["completion_tokens"] > 0


async def test_a_failed_upstream_is_one_line_not_two(gateway: Running, http: Session, access: Any) -> None:
    """The pipeline logs it, then raises it to the route's exception handler, which must not log it again."""
    base, _ = gateway
    async with http.post(f"{base}/v1/chat/completions", json={"model": "broken", **CHAT}, headers=AUTH) as resp:
        status, error = resp.status, (await resp.json())["error"]
        request_id = resp.headers.get("x-request-id")
    line = _one(access())
    assert line["status"] == status >= 500 and line["error"] == error["code"]
    # The error answer names the request, so a client can find its line.
    assert request_id is not None and line["request_id"] == request_id
    assert line["tenant"] == "tenant-a" and line["model"] == "broken" and line["cost_usd"] == "0"


async def test_a_client_that_leaves_mid_stream_is_one_line(gateway: Running, http: Session, access: Any) -> None:
    base, _ = gateway
    resp = await http.post(f"{base}/v1/chat/completions", json={"model": "dripping", "stream": True, **CHAT}, headers=AUTH)
    assert resp.status == 200
    await resp.content.readline()
    resp.close()  # 40 chunks, 50 ms apart: the client leaves after the first
    for _ in range(100):
        if access():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # and no second line comes
    line = _one(access())
    assert (line["status"], line["stream"], line["model"], line["deployment"]) == (499, True, "dripping", "dripping")
    assert line["ttft_ms"] is not None


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "code", "route"),
    [
        ("POST", CHAT_URL, WRONG, {"model": "fake-model", **CHAT}, 401, "invalid_api_key", CHAT_URL),
        ("POST", CHAT_URL, {}, {"model": "fake-model", **CHAT}, 401, "missing_api_key", CHAT_URL),
        ("POST", CHAT_URL, AUTH, b'{"model": "fake-model", "messages": [', 400, "invalid_json", CHAT_URL),
        ("POST", CHAT_URL, AUTH, {"model": "no-such-model", **CHAT}, 404, "model_not_found", CHAT_URL),
        (
            "POST",
            "/v1/messages",
            {"x-api-key": "sk-wrong-key-0123"},
            {"model": "fake-model", **CHAT},
            401,
            "invalid_api_key",
            "/v1/messages",
        ),
        ("GET", "/v1/no-such-thing", AUTH, None, 404, "not_found", "-"),
        ("DELETE", CHAT_URL, AUTH, None, 405, "method_not_allowed", "-"),
        ("GET", "/v1/models", WRONG, None, 401, "invalid_api_key", "/v1/models"),
    ],
    ids=["wrong-key", "no-key", "bad-json", "unknown-model", "anthropic-wrong-key", "unknown-url", "wrong-method", "models-wrong-key"],
)
async def test_a_request_refused_before_the_pipeline_is_one_line(
    gateway: Running, http: Session, access: Any,
    method: str, path: str, headers: dict[str, str], body: Any, status: int, code: str, route: str,
) -> None:  # fmt: skip
    base, _ = gateway
    payload = {"data": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    async with http.request(method, base + path, headers=headers, **payload) as resp:
        assert resp.status == status, await resp.text()
    line = _one(access())
    assert (line["status"], line["error"], line["route"]) == (status, code, route)
    assert line["tenant"] is None and line["key_id"] is None and line["request_id"] is None
    assert "sk-wrong-key" not in json.dumps(line)
    assert (line["latency_ms"] is None) == (route == "-")


async def test_successful_calls_outside_the_pipeline_are_not_logged(gateway: Running, http: Session, access: Any) -> None:
    base, _ = gateway
    for path in ("/healthz", "/v1/models"):
        async with http.get(base + path, headers=AUTH) as resp:
            assert resp.status == 200
    assert access() == []


async def test_turned_off_it_logs_nothing_and_costs_no_hook(fake_upstream: FakeUpstream, http: aiohttp.ClientSession, access: Any) -> None:
    config = _config(fake_upstream.url, access_log=False)
    gateway = Gateway(config)
    assert gateway.billing.after_record == []
    assert gateway.billing.after_answer == [gateway.budget_alerts]
    async with running_gateway(config, gateway) as (base, _):
        async with http.post(f"{base}/v1/chat/completions", json={"model": "fake-model", **CHAT}, headers=AUTH) as resp:
            assert resp.status == 200
        async with http.post(f"{base}/v1/chat/completions", json={"model": "fake-model", **CHAT}) as resp:
            assert resp.status == 401
        async with http.get(f"{base}/v1/nothing") as resp:
            assert resp.status == 404
    assert access() == []


async def test_an_upstream_error_code_that_quotes_the_prompt_is_written_nowhere(http: Session, access: Any) -> None:
    from aiohttp import web

    secret = "plnt-" + "quoted-prompt-0123"

    async def echoing(request: web.Request) -> web.Response:
        prompt = (await request.json())["messages"][-1]["content"]
        error = {"message": f"cannot take: {prompt}", "type": "invalid_request_error", "code": f"bad_{prompt}", "param": None}
        return web.json_response({"error": error}, status=400)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", echoing)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with running_gateway(make_config(f"http://127.0.0.1:{port}/v1")) as (base, _):
            body = {"model": "fake-model", "messages": [{"role": "user", "content": secret}]}
            async with http.post(f"{base}/v1/chat/completions", json=body, headers=AUTH) as resp:
                assert resp.status == 400
            async with http.get(f"{base}/metrics") as resp:
                metrics = await resp.text()
    finally:
        await runner.cleanup()
    assert secret not in json.dumps(access()) and secret not in metrics


def test_the_fast_path_writes_what_the_json_formatter_would() -> None:
    """With only the server's JSON handler listening, lines skip the LogRecord: the text must not change."""
    import io
    import logging.config

    from router import access_log
    from router.logs import log_config

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logging.config.dictConfig(log_config("warning"))
        (handler,) = root.handlers
        stream = io.StringIO()
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        line = access_log._Line(
            1796505479.058637, "info", "sluicegate.access", "request", "a" * 32, "req-1", "t", "k", "m", "d",
            "chat", 200, None, True, 7, 20, "0.00000123", 8.772, 1.5, 3, "candidate", "pinned:d",
        )  # fmt: skip
        access_log._emit(line)
        handler.flush()
        written = stream.getvalue()
        assert written.endswith("\n") and written.count("\n") == 1
        assert written[:-1] == JsonFormatter().format(access_log._Record(line))
        assert json.loads(written)["cost_usd"] == "0.00000123"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
