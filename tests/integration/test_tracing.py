"""Traces: one span per request, continuing the caller's trace, with no prompt or key in it."""

from __future__ import annotations

from datetime import datetime, timezone

import aiohttp

from bench.fake_upstream import FakeUpstream
from tests.conftest import TEST_KEY, make_config
from tests.integration.gateway_server import running_gateway

PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_span_per_request_with_parent_and_ledger_trace_id(fake_upstream: FakeUpstream) -> None:
    config = make_config(fake_upstream.url, telemetry={"tracing": True, "exporter": "memory"})
    async with running_gateway(config) as (base, gateway), aiohttp.ClientSession() as http:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "a very private prompt"}]}
        headers = {"authorization": f"Bearer {TEST_KEY}", "traceparent": f"00-{PARENT_TRACE}-00f067aa0ba902b7-01"}
        async with http.post(f"{base}/v1/chat/completions", json=body, headers=headers) as resp:
            assert resp.status == 200
        await gateway.ledger.flush()
        rows = await gateway.ledger.rows("tenant-a", datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc), 10)
        spans = gateway.tracing.exporter.get_finished_spans()
    (span,) = spans
    assert format(span.context.trace_id, "032x") == PARENT_TRACE
    attributes = dict(span.attributes)
    assert attributes["sluicegate.tenant"] == "tenant-a"
    assert attributes["gen_ai.request.model"] == "fake-model"
    assert attributes["http.response.status_code"] == 200
    assert attributes["gen_ai.usage.output_tokens"] > 0
    text = repr(attributes)
    assert "private prompt" not in text and TEST_KEY not in text
    assert rows[0].trace_id == PARENT_TRACE


async def test_tracing_off_records_nothing(fake_upstream: FakeUpstream) -> None:
    async with running_gateway(make_config(fake_upstream.url)) as (_, gateway):
        assert not gateway.tracing.enabled and gateway.tracing.exporter is None
