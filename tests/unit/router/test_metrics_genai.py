"""The OpenTelemetry GenAI instruments, after real requests through the app and a fake upstream.

Token usage, operation duration, time to first token and time per output token
with the conventions' labels; trace-id exemplars in the OpenMetrics format only;
no label from a model name the client made up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from bench.fake_upstream import FakeUpstream
from core.principal import Principal
from router.context import RequestContext
from router.gateway import Gateway
from router.metrics_genai import DURATION_BUCKETS, TOKEN_BUCKETS
from tests.conftest import TEST_KEY, make_config
from tests.integration.gateway_server import running_gateway

AUTH = {"authorization": f"Bearer {TEST_KEY}"}
CHAT = {"messages": [{"role": "user", "content": "hello there"}]}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
SERVED = {
    "gen_ai_operation_name": "chat",
    "gen_ai_provider_name": "openai",
    "gen_ai_request_model": "fake-model",
    "gen_ai_response_model": "fake-model",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
async def gateway(fake_upstream: FakeUpstream) -> AsyncIterator[tuple[str, Gateway]]:
    config = make_config(fake_upstream.url, telemetry={"tracing": True, "exporter": "memory"})
    async with running_gateway(config) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def scrape(http: aiohttp.ClientSession, base: str) -> Samples:
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    return {(s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def post(http: aiohttp.ClientSession, base: str, path: str, body: dict[str, Any], **headers: str) -> tuple[int, bytes]:
    async with http.post(f"{base}{path}", json=body, headers={**AUTH, **headers}) as resp:
        return resp.status, await resp.read()


async def test_a_chat_request_records_its_tokens_and_duration(gateway: tuple[str, Gateway], http: aiohttp.ClientSession) -> None:
    base, _ = gateway
    before = await scrape(http, base)
    async with http.post(f"{base}/v1/chat/completions", json={"model": "fake-model", **CHAT}, headers=AUTH) as resp:
        assert resp.status == 200
        usage = (await resp.json())["usage"]
    after = await scrape(http, base)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    tokens = "gen_ai_client_token_usage"
    assert delta(f"{tokens}_count", **SERVED, gen_ai_token_type="input") == 1
    assert delta(f"{tokens}_sum", **SERVED, gen_ai_token_type="input") == usage["prompt_tokens"]
    assert delta(f"{tokens}_sum", **SERVED, gen_ai_token_type="output") == usage["completion_tokens"]
    assert delta("gen_ai_client_operation_duration_seconds_count", **SERVED, error_type="") == 1
    # The conventions' buckets, as Prometheus writes them.
    assert ("gen_ai_client_operation_duration_seconds_bucket", frozenset({**SERVED, "error_type": "", "le": "81.92"}.items())) in after
    assert ("gen_ai_client_token_usage_bucket", frozenset({**SERVED, "gen_ai_token_type": "input", "le": "6.7108864e+07"}.items())) in after
    assert DURATION_BUCKETS[0] == 0.01 and TOKEN_BUCKETS[-1] == 67108864
    # Not streamed: no time to first token.
    assert delta("gen_ai_server_time_to_first_token_seconds_count", **SERVED) == 0


async def test_a_stream_records_time_to_first_token_and_per_output_token(gateway: tuple[str, Gateway], http: aiohttp.ClientSession) -> None:
    base, _ = gateway
    before = await scrape(http, base)
    body = {"model": "fake-model", "stream": True, "stream_options": {"include_usage": True}, **CHAT}
    status, raw = await post(http, base, "/v1/chat/completions", body)
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
    after = await scrape(http, base)
    ttft = "gen_ai_server_time_to_first_token_seconds"
    tpot = "gen_ai_server_time_per_output_token_seconds"
    assert value(after, f"{ttft}_count", **SERVED) - value(before, f"{ttft}_count", **SERVED) == 1
    assert value(after, f"{tpot}_count", **SERVED) - value(before, f"{tpot}_count", **SERVED) == 1
    assert 0 < value(after, f"{ttft}_sum", **SERVED) - value(before, f"{ttft}_sum", **SERVED) < 5
    assert value(after, f"{tpot}_sum", **SERVED) - value(before, f"{tpot}_sum", **SERVED) >= 0


async def test_completions_and_embeddings_name_their_operation(gateway: tuple[str, Gateway], http: aiohttp.ClientSession) -> None:
    base, _ = gateway
    status, _ = await post(http, base, "/v1/completions", {"model": "fake-model", "prompt": "hello"})
    assert status == 200
    status, _ = await post(http, base, "/v1/embeddings", {"model": "fake-model", "input": "hello"})
    assert status == 200
    after = await scrape(http, base)
    completion = {**SERVED, "gen_ai_operation_name": "text_completion"}
    embedding = {**SERVED, "gen_ai_operation_name": "embeddings"}
    assert value(after, "gen_ai_client_operation_duration_seconds_count", **completion, error_type="") >= 1
    assert value(after, "gen_ai_client_token_usage_count", **embedding, gen_ai_token_type="input") >= 1
    # An embedding generates nothing: no output tokens recorded.
    assert value(after, "gen_ai_client_token_usage_count", **embedding, gen_ai_token_type="output") == 0


async def test_a_failed_request_is_a_duration_with_its_error_type(gateway: tuple[str, Gateway], http: aiohttp.ClientSession) -> None:
    base, _ = gateway
    status, _ = await post(http, base, "/v1/chat/completions", {"model": "broken", **CHAT})
    assert status == 502
    after = await scrape(http, base)
    # Nothing served it: the provider is the planned deployment's, the response model absent.
    failed = {**SERVED, "gen_ai_request_model": "broken", "gen_ai_response_model": ""}
    assert value(after, "gen_ai_client_operation_duration_seconds_count", **failed, error_type="bad_gateway") >= 1
    assert value(after, "gen_ai_client_token_usage_count", **failed, gen_ai_token_type="input") == 0


async def test_exemplars_carry_the_trace_id_in_openmetrics_only(gateway: tuple[str, Gateway], http: aiohttp.ClientSession) -> None:
    base, _ = gateway
    status, _ = await post(http, base, "/v1/chat/completions", {"model": "fake-model", **CHAT}, traceparent=TRACEPARENT)
    assert status == 200
    async with http.get(f"{base}/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}) as resp:
        assert resp.headers["content-type"].startswith("application/openmetrics-text")
        text = await resp.text()
    exemplars = {
        sample.exemplar.labels["trace_id"]
        for family in openmetrics_families(text)
        if family.name == "gen_ai_client_operation_duration_seconds"
        for sample in family.samples
        if sample.exemplar is not None
    }
    assert TRACE_ID in exemplars
    # Prometheus' text format has no exemplars: a scraper that does not ask gets none.
    async with http.get(f"{base}/metrics") as resp:
        assert resp.headers["content-type"].startswith("text/plain")
        assert TRACE_ID not in await resp.text()


async def test_an_unknown_model_never_becomes_a_label(gateway: tuple[str, Gateway], http: aiohttp.ClientSession) -> None:
    base, _ = gateway
    made_up = "no-such-model-7f3a9c"
    status, _ = await post(http, base, "/v1/chat/completions", {"model": made_up, **CHAT})
    assert status == 404
    async with http.get(f"{base}/metrics") as resp:
        assert made_up not in await resp.text()


def test_a_request_refused_in_the_pipeline_for_an_unknown_alias_is_labelled_unknown(fake_upstream: FakeUpstream) -> None:
    """Batch lines and plugins' calls reach the pipeline with whatever model they name."""
    gateway = Gateway(make_config(fake_upstream.url))
    made_up = "client-typed-this-alias"
    ctx = RequestContext(
        request_id="r1", snapshot=gateway.snapshot, principal=Principal(tenant="tenant-a", key_id="key-a"),
        kind="chat", route="batch", alias=made_up, body={}, status=404, error="model_not_found", elapsed=0.01,
    )  # fmt: skip
    gateway.metrics.finished(ctx)
    text = gateway.metrics.render().decode()
    assert made_up not in text
    assert 'sluicegate_requests_total{model="-",route="batch",status="404"} 1.0' in text
    assert 'gen_ai_request_model="-"' in text and 'error_type="model_not_found"' in text
