"""Content on spans under a PII policy: only what the policy let leave the building is recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from opentelemetry.trace import SpanKind

from bench.fake_upstream import FakeUpstream
from router.auth import hash_api_key
from router.gateway import Gateway
from tests.conftest import make_config
from tests.integration.gateway_server import running_gateway

pytest.importorskip("presidio_analyzer", reason="PII detection needs the `pii` extra")

EMAIL = "jane.doe@example.com"
TEXT = f"Please write to {EMAIL} today."
POLICIES = {"redact": "redact", "mask": "mask_and_restore", "restrict": "restrict"}
KEYS = {name: f"sk-trace-{name}-0123456789" for name in POLICIES}


def _config(upstream: str) -> Any:
    deployments = [
        {"name": "cloud-echo", "provider": "openai", "base_url": upstream, "model": "echo"},
        {"name": "onprem-echo", "provider": "openai_compatible", "base_url": upstream, "model": "echo", "privacy": "self_hosted"},
    ]
    models = [{"alias": "cloud", "deployments": ["cloud-echo"]}, {"alias": "local", "deployments": ["onprem-echo"]}]
    tenants = [
        {"id": f"t-{name}", "keys": [{"id": f"k-{name}", "hash": hash_api_key(KEYS[name])}], "trace_content": True,
         "pii": {"action": action, "entities": ["EMAIL_ADDRESS"]}}
        for name, action in POLICIES.items()
    ]  # fmt: skip
    return make_config(upstream, deployments=deployments, models=models, tenants=tenants, telemetry={"tracing": True, "exporter": "memory"})


@pytest.fixture(scope="module")
async def traced(fake_upstream: FakeUpstream) -> AsyncIterator[tuple[str, Gateway]]:
    async with running_gateway(_config(fake_upstream.url)) as running:
        yield running


async def _content(traced: tuple[str, Gateway], who: str, alias: str, *, stream: bool = False) -> tuple[bytes, dict[str, Any]]:
    """The client's answer, and the content attributes of the request's root span."""
    base, gateway = traced
    exporter = gateway.tracing.exporter
    assert exporter is not None
    exporter.clear()  # type: ignore[attr-defined]
    body = {"model": alias, "stream": stream, "messages": [{"role": "user", "content": TEXT}]}
    headers = {"authorization": f"Bearer {KEYS[who]}"}
    async with aiohttp.ClientSession() as http, http.post(f"{base}/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 200
        answer = await resp.read()
    (root,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]  # type: ignore[attr-defined]
    attributes = dict(root.attributes or {})
    content = {k: msgspec.json.decode(str(v)) for k, v in attributes.items() if k in ("gen_ai.input.messages", "gen_ai.output.messages")}
    return answer, content


def _text(messages: list[dict[str, Any]]) -> str:
    return "".join(part.get("content", "") for message in messages for part in message["parts"])


@pytest.mark.parametrize("stream", [False, True])
async def test_redact_records_the_redacted_prompt_and_answer(traced: tuple[str, Gateway], stream: bool) -> None:
    _, content = await _content(traced, "redact", "cloud", stream=stream)
    assert _text(content["gen_ai.input.messages"]) == "Please write to <EMAIL_ADDRESS_1> today."
    assert "<EMAIL_ADDRESS_1>" in _text(content["gen_ai.output.messages"])
    assert EMAIL not in repr(content)


@pytest.mark.parametrize("stream", [False, True])
async def test_mask_records_what_the_cloud_saw_not_what_the_client_got_back(traced: tuple[str, Gateway], stream: bool) -> None:
    answer, content = await _content(traced, "mask", "cloud", stream=stream)
    assert EMAIL in answer.decode()  # restored for the client...
    assert EMAIL not in repr(content)  # ...but never on the span
    assert "<EMAIL_ADDRESS_1>" in _text(content["gen_ai.input.messages"])
    assert "<EMAIL_ADDRESS_1>" in _text(content["gen_ai.output.messages"])


async def test_self_hosted_answer_to_a_redacted_prompt_is_not_recorded(traced: tuple[str, Gateway]) -> None:
    answer, content = await _content(traced, "redact", "local")
    assert EMAIL in answer.decode()  # the self-hosted deployment saw the original
    assert _text(content["gen_ai.input.messages"]) == "Please write to <EMAIL_ADDRESS_1> today."
    assert "gen_ai.output.messages" not in content


async def test_restricted_prompt_is_not_recorded(traced: tuple[str, Gateway]) -> None:
    _, content = await _content(traced, "restrict", "local")
    assert content == {}


async def test_prompt_without_pii_is_recorded_as_sent(traced: tuple[str, Gateway]) -> None:
    base, gateway = traced
    exporter = gateway.tracing.exporter
    assert exporter is not None
    exporter.clear()  # type: ignore[attr-defined]
    body = {"model": "local", "messages": [{"role": "user", "content": "nothing personal"}]}
    headers = {"authorization": f"Bearer {KEYS['restrict']}"}
    async with aiohttp.ClientSession() as http, http.post(f"{base}/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 200
    (root,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]  # type: ignore[attr-defined]
    attributes = dict(root.attributes or {})
    assert "nothing personal" in str(attributes["gen_ai.input.messages"]) and "gen_ai.output.messages" in attributes
    assert "pii" in {s.name for s in exporter.get_finished_spans()}  # type: ignore[attr-defined]
