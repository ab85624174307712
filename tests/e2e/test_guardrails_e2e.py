"""Guardrails on the request path, end to end: the real app in front of the fake upstream and a fake moderation server.

A disallowed tool is refused before any engine is asked (the fake upstream
records no call); a secret the upstream streams ends the stream with
``finish_reason: content_filter`` and never reaches the client whole; a
moderation guardrail whose server hangs fails open or closed within its
timeout; each block is a 400 naming the guardrail, a ledger field, an audit
entry and a metric. ``/v1/moderations`` answers from the configured
moderation deployment.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import aiohttp
import msgspec
import pytest

from bench.fake_upstream import FakeUpstream
from budgets.ledger_row import LedgerRow
from core.config import Config, ConfigError
from core.plugin import Plugin
from policies.guardrails_types import Text, Verdict
from router import plugins as plugin_host
from router.config_resolve import resolve
from router.gateway import Gateway
from tests.conftest import OTHER_KEY, TEST_KEY, make_config
from tests.fakes.moderation_server import ModerationServer, moderation_server
from tests.integration.gateway_server import running_gateway

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
EPOCH, FAR = datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(days=1)
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
BAD_TOOL = {"type": "function", "function": {"name": "delete_everything", "parameters": {"type": "object", "properties": {}}}}


def _config(upstream: str, moderation: str) -> Config:
    raw: dict[str, Any] = msgspec.to_builtins(make_config(upstream))
    raw["deployments"] += [
        {"name": "echo", "provider": "openai", "base_url": upstream, "model": "fake-echo"},
        {"name": "moderator", "provider": "openai", "base_url": moderation, "model": "omni-moderation-latest"},
        {"name": "hanging-moderator", "provider": "openai", "base_url": moderation, "model": "slow", "timeouts": {"read_s": 0.3}},
    ]
    hanging = {"kind": "moderation", "deployment": "hanging-moderator", "timeout_s": 0.3}
    raw["models"] += [
        {"alias": "tools", "deployments": ["normal"],
         "guardrails": [{"kind": "tool_allowlist", "name": "tools-only", "allow": ["get_weather"]}]},
        {"alias": "echo-guarded", "deployments": ["echo"], "guardrails": [
            {"kind": "secrets", "name": "no-secrets-out", "mode": "stream", "window_chars": 64},
            {"kind": "secrets", "name": "no-secrets-answer", "mode": "post"},
        ]},
        {"alias": "echo-open", "deployments": ["echo"]},
        {"alias": "echo-cached", "deployments": ["echo"], "cache": {"ttl_s": 300}},
        {"alias": "moderated-open", "deployments": ["normal"], "guardrails": [{**hanging, "name": "mod-open", "on_error": "fail_open"}]},
        {"alias": "moderated-closed", "deployments": ["normal"],
         "guardrails": [{**hanging, "name": "mod-closed", "on_error": "fail_closed"}]},
        {"alias": "moderation", "deployments": ["moderator"]},
        {"alias": "moderation-hanging", "deployments": ["hanging-moderator"]},
    ]  # fmt: skip
    # tenant-b's own guardrail runs before any alias's: a pattern it may never send.
    raw["tenants"][1]["guardrails"] = [
        {"kind": "deny_patterns", "name": "no-codenames", "patterns": ["project[- ]falcon"], "ignore_case": True},
        {"kind": "secrets", "name": "b-no-secrets-answer", "mode": "post"},
        {"kind": "secrets", "name": "b-no-secrets-out", "mode": "stream", "window_chars": 64},
    ]
    # Both tenants share cache entries: what one was answered, the other may be replayed, screened by its own guardrails.
    for tenant in raw["tenants"][:2]:
        tenant["cache"] = {"scope": "team"}
    return msgspec.convert(raw, Config)


@pytest.fixture
async def moderation() -> AsyncIterator[ModerationServer]:
    async with moderation_server() as server:
        server.slow_s = 1.5  # "hangs" well past the guardrails' 0.3 s, without holding up the server's shutdown long
        yield server


@pytest.fixture
async def gateway(fake_upstream: FakeUpstream, moderation: ModerationServer) -> AsyncIterator[tuple[str, Gateway]]:
    async with running_gateway(_config(fake_upstream.url, moderation.base_url)) as running:
        yield running


def _headers(key: str = TEST_KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def _upstream_saw(fake_upstream: FakeUpstream, marker: str) -> int:
    return sum(marker in msgspec.json.encode(r.get("json")).decode() for r in fake_upstream.requests)


async def _row(gateway: Gateway, tenant: str, request_id: str) -> LedgerRow:
    assert gateway.ledger is not None
    await gateway.ledger.flush()
    rows = [r for r in await gateway.ledger.rows(tenant, EPOCH, FAR, 100) if r.request_id == request_id]
    assert len(rows) == 1
    return rows[0]


def _verdicts(gateway: Gateway, guardrail: str, mode: str, outcome: str) -> float:
    labels = {"guardrail": guardrail, "mode": mode, "outcome": outcome}
    return gateway.metrics.registry.get_sample_value("sluicegate_guardrail_verdicts_total", labels) or 0.0


async def test_a_disallowed_tool_is_refused_before_any_engine_and_an_allowed_one_passes(
    gateway: tuple[str, Gateway], fake_upstream: FakeUpstream
) -> None:
    base, gw = gateway
    marker = secrets.token_hex(8)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/chat/completions", json=_chat("tools", marker, tools=[TOOL, BAD_TOOL]), headers=_headers()) as r:
            assert r.status == 400
            error = (await r.json())["error"]
            request_id = r.headers["x-request-id"]
        assert error["code"] == "guardrail_blocked" and error["type"] == "invalid_request_error"
        assert "'tools-only'" in error["message"] and "delete_everything" not in error["message"]
        assert _upstream_saw(fake_upstream, marker) == 0
        async with http.post(f"{base}/v1/chat/completions", json=_chat("tools", marker, tools=[TOOL]), headers=_headers()) as r:
            assert r.status == 200
        assert _upstream_saw(fake_upstream, marker) == 1
    row = await _row(gw, "tenant-a", request_id)
    assert (row.status, row.error, row.guardrail, row.cost, row.deployment) == (400, "guardrail_blocked", "tools-only", 0, "")
    assert _verdicts(gw, "tools-only", "pre", "blocked") == 1
    await gw.guardrails.close()  # the audit entry is written in the background: drained here
    entries = [e for e in await gw.tenants.list_audit("tenant-a") if e.action == "guardrail.block"]
    assert [(e.actor, e.target) for e in entries] == [("system", "guardrail/tools-only")]
    event = msgspec.to_builtins(entries[0])
    assert marker not in msgspec.json.encode(event).decode()


async def test_a_tenants_guardrail_applies_to_its_requests_only(gateway: tuple[str, Gateway]) -> None:
    base, _ = gateway
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/v1/chat/completions", json=_chat("fake-model", "about Project Falcon"), headers=_headers(OTHER_KEY)
        ) as r:
            assert r.status == 400
            assert "'no-codenames'" in (await r.json())["error"]["message"]
        async with http.post(f"{base}/v1/chat/completions", json=_chat("fake-model", "about Project Falcon"), headers=_headers()) as r:
            assert r.status == 200


async def _stream_text(
    http: aiohttp.ClientSession, base: str, body: dict[str, Any], key: str = TEST_KEY, usage: list[Any] | None = None
) -> tuple[str, list[str | None], str, bool]:
    async with http.post(f"{base}/v1/chat/completions", json={**body, "stream": True}, headers=_headers(key)) as r:
        assert r.status == 200
        request_id = r.headers["x-request-id"]
        raw = (await r.read()).decode()
    text, reasons, done = "", [], False
    for line in raw.splitlines():
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
            continue
        chunk = msgspec.json.decode(line[6:])
        if usage is not None and chunk.get("usage"):
            usage.append(chunk["usage"])
        for choice in chunk.get("choices", []):
            text += choice.get("delta", {}).get("content") or ""
            reasons.append(choice.get("finish_reason"))
    return text, [r for r in reasons if r is not None], request_id, done


async def test_a_secret_the_upstream_streams_ends_the_stream_with_content_filter(
    gateway: tuple[str, Gateway], fake_upstream: FakeUpstream
) -> None:
    base, gw = gateway
    # The fake echoes the prompt back in 4-character pieces: the key arrives split across chunks.
    prompt = f"Here are the deploy notes. The key is {AWS_KEY} and then a long tail of text that must never be sent on."
    async with aiohttp.ClientSession() as http:
        text, reasons, request_id, done = await _stream_text(http, base, _chat("echo-guarded", prompt))
        assert reasons == ["content_filter"] and done
        assert AWS_KEY[:4] not in text and "long tail" not in text  # no piece of the key: the text before it is held back
        assert prompt.startswith(text)
        clean = "Nothing secret here, just a sentence long enough to span many chunks. " * 8
        kept, reasons, _, _ = await _stream_text(http, base, _chat("echo-guarded", clean))
        assert kept == clean and reasons == ["stop"]  # held text goes out whole once the stream ends
        calls = len(fake_upstream.requests)
        # The same stream without the guardrail: the whole text, so the cut above was the guardrail's.
        whole, reasons, _, _ = await _stream_text(http, base, _chat("echo-open", prompt))
        assert whole == prompt and reasons == ["stop"]
        assert len(fake_upstream.requests) == calls + 1  # one call each: the cut stream was not retried
    row = await _row(gw, "tenant-a", request_id)
    assert (row.status, row.error, row.guardrail, row.stream) == (200, "guardrail_blocked", "no-secrets-out", True)
    assert row.completion_tokens > 0  # what the upstream generated is still billed
    assert _verdicts(gw, "no-secrets-out", "stream", "blocked") == 1


async def test_a_stream_a_guardrail_ended_still_reports_its_usage(gateway: tuple[str, Gateway]) -> None:
    base, gw = gateway
    prompt = f"The key is {AWS_KEY} and then a long tail of text that must never be sent on."
    usage: list[Any] = []
    async with aiohttp.ClientSession() as http:
        body = _chat("echo-guarded", prompt, stream_options={"include_usage": True})
        text, reasons, request_id, done = await _stream_text(http, base, body, usage=usage)
    assert reasons == ["content_filter"] and done and AWS_KEY not in text
    row = await _row(gw, "tenant-a", request_id)
    assert len(usage) == 1 and usage[0]["completion_tokens"] == row.completion_tokens > 0
    assert usage[0]["prompt_tokens"] == row.prompt_tokens


async def test_a_cache_hit_is_screened_by_the_requesters_own_guardrails(gateway: tuple[str, Gateway], fake_upstream: FakeUpstream) -> None:
    base, gw = gateway
    marker = secrets.token_hex(6)
    payload = _chat("echo-cached", f"the key is {AWS_KEY} ({marker})", temperature=0)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/chat/completions", json=payload, headers=_headers()) as r:
            assert (r.status, r.headers["x-sluicegate-cache"]) == (200, "miss")  # tenant-a has no guardrail
            stored = r.headers["x-request-id"]
        await _row(gw, "tenant-a", stored)
        await asyncio.sleep(0.2)  # the entry is written after the response
        async with http.post(f"{base}/v1/chat/completions", json=payload, headers=_headers()) as r:
            assert (r.status, r.headers["x-sluicegate-cache"]) == (200, "hit")
        async with http.post(f"{base}/v1/chat/completions", json=payload, headers=_headers(OTHER_KEY)) as r:
            assert r.status == 400
            body = await r.json()
        assert "'b-no-secrets-answer'" in body["error"]["message"] and AWS_KEY not in msgspec.json.encode(body).decode()
        # Streamed: stored from tenant-a's stream, replayed to tenant-b's and ended by its stream guardrail.
        streamed = {**payload, "stream_options": {"include_usage": True}}
        whole, _, first, _ = await _stream_text(http, base, streamed)
        assert AWS_KEY in whole
        await _row(gw, "tenant-a", first)
        await asyncio.sleep(0.2)
        usage: list[Any] = []
        text, reasons, request_id, done = await _stream_text(http, base, streamed, key=OTHER_KEY, usage=usage)
    assert reasons == ["content_filter"] and done and AWS_KEY[:4] not in text and len(usage) == 1
    row = await _row(gw, "tenant-b", request_id)
    assert (row.cache, row.guardrail, row.error) == ("hit", "b-no-secrets-out", "guardrail_blocked")
    assert _upstream_saw(fake_upstream, marker) == 2  # one unary answer and one stream, each asked once


@pytest.mark.parametrize(
    ("path", "body", "ending"),
    [
        ("/v1/messages", {"max_tokens": 200, "messages": [{"role": "user", "content": "PROMPT"}]}, '"stop_reason":"refusal"'),
        ("/v1/responses", {"input": "PROMPT"}, '"incomplete_details":{"reason":"content_filter"}'),
    ],
)
async def test_other_surfaces_end_a_screened_stream_in_their_own_shape(
    gateway: tuple[str, Gateway], path: str, body: dict[str, Any], ending: str
) -> None:
    base, _ = gateway
    prompt = f"The key is {AWS_KEY} and then a long tail of text that must never be sent on."
    wanted = msgspec.json.decode(msgspec.json.encode(body).replace(b"PROMPT", prompt.encode()))
    payload = {**wanted, "model": "echo-guarded", "stream": True}
    async with aiohttp.ClientSession() as http, http.post(f"{base}{path}", json=payload, headers=_headers()) as r:
        assert r.status == 200
        raw = (await r.read()).decode()
    assert ending in raw
    assert AWS_KEY not in raw and "long tail" not in raw


async def test_a_secret_in_a_whole_answer_is_refused_after_the_call_which_is_still_billed(gateway: tuple[str, Gateway]) -> None:
    base, gw = gateway
    payload = _chat("echo-guarded", f"key {AWS_KEY}")
    async with aiohttp.ClientSession() as http, http.post(f"{base}/v1/chat/completions", json=payload, headers=_headers()) as r:
        assert r.status == 400
        body = await r.json()
        request_id = r.headers["x-request-id"]
    assert AWS_KEY not in msgspec.json.encode(body).decode()
    assert "'no-secrets-answer'" in body["error"]["message"]
    row = await _row(gw, "tenant-a", request_id)
    assert (row.status, row.error, row.guardrail, row.deployment) == (400, "guardrail_blocked", "no-secrets-answer", "echo")
    assert row.completion_tokens > 0


@pytest.mark.parametrize(("alias", "status"), [("moderated-open", 200), ("moderated-closed", 503)])
async def test_a_hanging_guardrail_fails_open_or_closed_within_its_timeout(
    gateway: tuple[str, Gateway], moderation: ModerationServer, alias: str, status: int
) -> None:
    base, gw = gateway
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/v1/chat/completions", json=_chat(alias, "hello"), headers=_headers()) as r,
    ):
        assert r.status == status
        body = await r.json()
    assert time.perf_counter() - started < 2.0  # the server hangs 5 s; the guardrail's timeout is 0.3 s
    assert moderation.requests, "the moderation server was asked"
    guardrail = alias.replace("moderated", "mod")
    if status == 503:
        assert body["error"]["code"] == "guardrail_unavailable" and f"'{guardrail}'" in body["error"]["message"]
        assert _verdicts(gw, guardrail, "pre", "blocked") == 1
    else:
        assert body["choices"][0]["message"]["content"]
        assert _verdicts(gw, guardrail, "pre", "fault") == 1


async def test_moderations_route_answers_from_the_moderation_deployment(gateway: tuple[str, Gateway], moderation: ModerationServer) -> None:
    base, _ = gateway
    async with aiohttp.ClientSession() as http:
        body = {"model": "moderation", "input": ["I will kill it", "a nice day"]}
        async with http.post(f"{base}/v1/moderations", json=body, headers=_headers()) as r:
            assert r.status == 200
            answer = await r.json()
        assert answer["model"] == "moderation" and answer["id"].startswith("modr-")
        assert [res["flagged"] for res in answer["results"]] == [True, False]
        assert answer["results"][0]["categories"]["violence"] is True
        assert moderation.requests[-1][0]["model"] == "omni-moderation-latest"
        async with http.post(f"{base}/v1/moderations", json={"model": "moderation", "input": "x"}, headers=_headers("sk-wrong")) as r:
            assert r.status == 401
        async with http.post(f"{base}/v1/moderations", json={"input": "x"}, headers=_headers()) as r:
            assert r.status == 400
        async with http.post(f"{base}/v1/moderations", json={"model": "no-such", "input": "x"}, headers=_headers()) as r:
            assert r.status == 404
        started = time.perf_counter()
        async with http.post(f"{base}/v1/moderations", json={"model": "moderation-hanging", "input": "x"}, headers=_headers()) as r:
            assert r.status == 504
        assert time.perf_counter() - started < 1.2


async def test_a_request_with_no_guardrails_does_no_guardrail_work(fake_upstream: FakeUpstream) -> None:
    config = make_config(fake_upstream.url)
    async with running_gateway(config) as (base, gw):
        assert gw.snapshot.guardrails is None  # the pipeline's one check
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{base}/v1/chat/completions", json={**_chat("fake-model", "hi"), "stream": True}, headers=_headers()) as r,
        ):
            assert r.status == 200
            await r.read()
        assert gw.guardrails._executor is None and gw.guardrails._session is None


class _Codeword:
    """A plugin's guardrail: blocks a text holding "bananas"; hangs on one holding "hang"."""

    name = "codeword"

    async def check(self, texts: Sequence[Text]) -> Verdict:
        joined = " ".join(t.text for t in texts)
        if "hang" in joined:
            await asyncio.sleep(10)
        return Verdict("blocked" if "bananas" in joined else "allowed", self.name, "codeword")


class _GuardrailPlugin(Plugin):
    name = "codeword-plugin"
    guardrail_names = ("codeword",)

    def guardrails(self) -> dict[str, object]:
        return {"codeword": _Codeword()}


@pytest.fixture
def guardrail_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = SimpleNamespace(name="codeword-plugin", load=lambda: _GuardrailPlugin)
    monkeypatch.setattr(plugin_host, "discover", lambda: {"codeword-plugin": entry})


def _plugin_config(upstream: str) -> Config:
    raw: dict[str, Any] = msgspec.to_builtins(make_config(upstream))
    raw["plugins"] = [{"name": "codeword-plugin"}]
    plugin = {"kind": "plugin", "plugin": "codeword", "timeout_s": 0.3}
    raw["models"] += [
        {"alias": "plugin-open", "deployments": ["normal"], "guardrails": [{**plugin, "name": "word-open", "on_error": "fail_open"}]},
        {"alias": "plugin-closed", "deployments": ["normal"], "guardrails": [{**plugin, "name": "word-closed", "on_error": "fail_closed"}]},
    ]
    return msgspec.convert(raw, Config)


async def test_a_plugins_guardrail_blocks_and_fails_open_or_closed_within_its_timeout(
    fake_upstream: FakeUpstream, guardrail_plugin: None
) -> None:
    async with running_gateway(_plugin_config(fake_upstream.url)) as (base, gw), aiohttp.ClientSession() as http:
        for alias, text, status in [
            ("plugin-open", "I like bananas", 400),
            ("plugin-open", "hang on", 200),
            ("plugin-closed", "hang on", 503),
            ("plugin-closed", "hello", 200),
        ]:
            started = time.perf_counter()
            async with http.post(f"{base}/v1/chat/completions", json=_chat(alias, text), headers=_headers()) as r:
                assert (alias, text, r.status) == (alias, text, status)
            assert time.perf_counter() - started < 2.0
        assert _verdicts(gw, "word-open", "pre", "blocked") == 1
        assert _verdicts(gw, "word-open", "pre", "fault") == 1
        assert _verdicts(gw, "word-closed", "pre", "blocked") == 1


def test_a_plugin_guardrail_no_enabled_plugin_offers_is_refused_naming_the_key(fake_upstream: FakeUpstream, guardrail_plugin: None) -> None:
    raw: dict[str, Any] = msgspec.to_builtins(_plugin_config(fake_upstream.url))
    raw["models"][-1]["guardrails"][0]["plugin"] = "nope"
    with pytest.raises(ConfigError, match=r"key `models\[\d+\]\.guardrails\[0\]\.plugin`: no enabled plugin offers guardrail 'nope'"):
        resolve(msgspec.convert(raw, Config))
