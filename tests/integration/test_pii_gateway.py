"""PII policies through the gateway, against fake upstreams that record what they receive."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from bench.fake_upstream import FakeUpstream
from router.auth import hash_api_key
from tests.conftest import make_config
from tests.integration.gateway_server import running_gateway

pytest.importorskip("presidio_analyzer", reason="PII detection needs the `pii` extra")

EMAIL, PHONE, CARD = "jane.doe@example.com", "+1 415 555 0132", "4111 1111 1111 1111"
SECRET = "sk-proj-Zx81Qm2Lp0Vb7Tn4Rk5Wc9Yd3Hs6Jf"
VALUES = (EMAIL, PHONE, CARD, SECRET, "4111111111111111")
TEXT = f"Mail {EMAIL} or call {PHONE}; card {CARD}; key {SECRET}."
PATTERNS = {"entities": ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "SECRET"]}
KEYS = {action: f"sk-pii-{action}-0123456789" for action in ("redact", "mask", "block", "restrict", "broken")}


def _config(upstream: str) -> Any:
    deployments = [
        {"name": "cloud-echo", "provider": "openai", "base_url": upstream, "model": "echo",
         "price": {"input_per_mtok": 100, "output_per_mtok": 100}},
        {"name": "cloud-embed", "provider": "openai", "base_url": upstream, "model": "fake-embed"},
        {"name": "onprem", "provider": "openai_compatible", "base_url": upstream, "model": "echo", "privacy": "self_hosted",
         "price": {"input_per_mtok": 900, "output_per_mtok": 900}},
    ]
    models = [
        {"alias": "echo", "deployments": ["cloud-echo"]},
        {"alias": "embed", "deployments": ["cloud-embed"]},
        {"alias": "mixed", "deployments": ["cloud-echo", "onprem"]},
    ]
    policies = {"redact": "redact", "mask": "mask_and_restore", "block": "block", "restrict": "restrict", "broken": "redact"}
    tenants = [
        {"id": f"pii-{name}", "keys": [{"id": f"k-{name}", "hash": hash_api_key(key)}],
         "pii": {"action": policies[name], **PATTERNS}, "routing": {"strategy": "cheapest"}}
        for name, key in KEYS.items()
    ]
    return make_config(upstream, deployments=deployments, models=models, tenants=tenants)


@pytest.fixture(scope="module")
async def pii_gateway(fake_upstream: FakeUpstream) -> AsyncIterator[tuple[str, Any]]:
    async with running_gateway(_config(fake_upstream.url)) as running:
        yield running


async def _post(base: str, who: str, path: str, body: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}{path}", json=body, headers={"authorization": f"Bearer {KEYS[who]}"}) as resp:
            return resp.status, await resp.read(), {k.lower(): v for k, v in resp.headers.items()}


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": f"Weather; questions to {EMAIL}",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string", "description": f"A city, or call {PHONE}"},
        "unit": {"type": "string", "enum": ["C", "F", CARD]}}}}}


REQUESTS = [
    ("/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": TEXT}]}),
    ("/v1/chat/completions", {"model": "echo", "messages": [
        {"role": "system", "content": f"Escalate to {EMAIL}."},
        {"role": "user", "content": [{"type": "text", "text": TEXT}, {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "lookup", "arguments": msgspec.json.encode({"email": EMAIL, "card": CARD}).decode()}}]},
        {"role": "tool", "tool_call_id": "c1", "content": f"Found {PHONE}"},
        {"role": "user", "content": "thanks"}]}),
    ("/v1/chat/completions", {"model": "echo", "stream": True, "messages": [{"role": "user", "content": TEXT}]}),
    # Tool definitions, a tool result in text parts and a message name reach the model too.
    ("/v1/chat/completions", {"model": "echo", "tools": [WEATHER_TOOL], "messages": [
        {"role": "user", "content": "weather please", "name": SECRET},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": f"Sunny. Reports to {EMAIL}"}]}]}),
    # The Responses API: instructions, input items (a message, a call and its output) and tools.
    ("/v1/responses", {"model": "echo", "store": False, "instructions": f"Escalate to {EMAIL}.", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": TEXT}]},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": msgspec.json.encode({"card": CARD}).decode()},
        {"type": "function_call_output", "call_id": "c1", "output": f"Found {PHONE}"}],
     "tools": [{"type": "function", "name": "lookup", "description": f"Ask {SECRET}", "parameters": {"type": "object"}}]}),
    # The Anthropic Messages API: the system prompt, a tool_result block and a tool's description.
    ("/v1/messages", {"model": "echo", "max_tokens": 16, "system": f"Escalate to {EMAIL}.", "messages": [
        {"role": "user", "content": TEXT},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {"card": CARD}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": f"Found {PHONE}"}]}],
     "tools": [{"name": "lookup", "description": f"Ask {SECRET}", "input_schema": {"type": "object"}}]}),
    ("/v1/completions", {"model": "echo", "prompt": TEXT}),
    ("/v1/completions", {"model": "echo", "prompt": [TEXT, f"again {EMAIL}"]}),
    ("/v1/embeddings", {"model": "embed", "input": TEXT}),
    ("/v1/embeddings", {"model": "embed", "input": [TEXT, f"{PHONE} only"]}),
]


@pytest.mark.parametrize(("path", "body"), REQUESTS)
async def test_redact_never_lets_a_value_reach_the_cloud(pii_gateway, fake_upstream: FakeUpstream, path: str, body: dict) -> None:
    base, _ = pii_gateway
    fake_upstream.requests.clear()
    status, _, _ = await _post(base, "redact", path, body)
    assert status == 200
    seen = msgspec.json.encode([r["json"] for r in fake_upstream.requests]).decode()
    assert seen and "<EMAIL_ADDRESS_1>" in seen or "<PHONE_NUMBER_1>" in seen
    for value in VALUES:
        assert value not in seen


async def test_tool_definitions_keep_their_structure_when_redacted(pii_gateway, fake_upstream: FakeUpstream) -> None:
    base, _ = pii_gateway
    fake_upstream.requests.clear()
    body = {"model": "echo", "tools": [WEATHER_TOOL], "messages": [{"role": "user", "content": "weather please"}]}
    status, _, _ = await _post(base, "redact", "/v1/chat/completions", body)
    assert status == 200
    sent = fake_upstream.requests[-1]["json"]["tools"][0]["function"]
    assert sent["description"] == "Weather; questions to <EMAIL_ADDRESS_1>"
    parameters = sent["parameters"]
    assert (parameters["type"], parameters["required"], sorted(parameters["properties"])) == ("object", ["city"], ["city", "unit"])
    assert parameters["properties"]["city"] == {"type": "string", "description": "A city, or call <PHONE_NUMBER_1>"}
    assert parameters["properties"]["unit"]["enum"] == ["C", "F", "<CREDIT_CARD_1>"]


async def test_mask_and_restore_non_stream(pii_gateway) -> None:
    base, _ = pii_gateway
    status, raw, _ = await _post(base, "mask", "/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": TEXT}]})
    assert status == 200
    assert msgspec.json.decode(raw)["choices"][0]["message"]["content"] == TEXT


async def test_mask_and_restore_stream_with_placeholders_split_across_chunks(pii_gateway, fake_upstream) -> None:
    base, _ = pii_gateway
    fake_upstream.requests.clear()
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": TEXT}]}
    status, raw, _ = await _post(base, "mask", "/v1/chat/completions", body)
    assert status == 200
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    text = "".join(
        (c["choices"][0]["delta"].get("content") or "") for c in map(msgspec.json.decode, events[:-1]) if c["choices"]
    )
    assert text == TEXT
    assert EMAIL not in msgspec.json.encode([r["json"] for r in fake_upstream.requests]).decode()


async def test_block_names_entity_types_never_values(pii_gateway) -> None:
    base, _ = pii_gateway
    status, raw, _ = await _post(base, "block", "/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": TEXT}]})
    error = msgspec.json.decode(raw)["error"]
    assert status == 400 and error["code"] == "pii_blocked"
    for entity in ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "SECRET"):
        assert entity in error["message"]
    for value in VALUES:
        assert value not in raw.decode()


async def test_restrict_sends_pii_to_self_hosted_and_the_rest_to_the_cheapest(pii_gateway) -> None:
    base, _ = pii_gateway
    status, _, headers = await _post(
        base, "restrict", "/v1/chat/completions", {"model": "mixed", "messages": [{"role": "user", "content": TEXT}]}
    )
    assert (status, headers["x-sluicegate-deployment"]) == (200, "onprem")
    assert "self_hosted_only" in headers["x-sluicegate-route-reason"]
    status, _, headers = await _post(
        base, "restrict", "/v1/chat/completions", {"model": "mixed", "messages": [{"role": "user", "content": "what is the weather"}]}
    )
    assert (status, headers["x-sluicegate-deployment"]) == (200, "cloud-echo")


async def test_analyzer_failure_fails_closed(pii_gateway, fake_upstream, monkeypatch) -> None:
    from policies import pii_engine

    def explode(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("analyzer down")

    monkeypatch.setattr(pii_engine.PiiEngine, "analyze", explode)
    base, _ = pii_gateway
    fake_upstream.requests.clear()
    status, raw, _ = await _post(base, "broken", "/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": TEXT}]})
    assert status == 503 and msgspec.json.decode(raw)["error"]["code"] == "pii_analyzer_unavailable"
    assert list(fake_upstream.requests) == []  # nothing unscanned left the building


async def test_text_beyond_the_scan_limit_is_refused_not_sent(fake_upstream: FakeUpstream) -> None:
    config = _config(fake_upstream.url)
    tenants = [msgspec.to_builtins(t) for t in config.tenants]
    tenants[0]["pii"]["max_scan_chars"] = 1000
    config = make_config(fake_upstream.url, deployments=[msgspec.to_builtins(d) for d in config.deployments],
                         models=[msgspec.to_builtins(m) for m in config.models], tenants=tenants)
    async with running_gateway(config) as (base, _):
        fake_upstream.requests.clear()
        body = {"model": "echo", "messages": [{"role": "user", "content": "1 " * 600}]}
        status, raw, _ = await _post(base, "redact", "/v1/chat/completions", body)
        assert status == 400 and msgspec.json.decode(raw)["error"]["code"] == "pii_scan_too_large"
        assert list(fake_upstream.requests) == []
        status, _, _ = await _post(
            base, "redact", "/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": TEXT}]}
        )
        assert status == 200
