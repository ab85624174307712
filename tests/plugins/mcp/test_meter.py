"""Metering: the ``execute_tool`` span in the GenAI conventions, the audit entry, the metrics."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest
from sluicegate_mcp.meter import AUDIT_ACTION, Meter, ToolCall, trace_of

from tests.plugins.mcp.fakes import FakeServices

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_trace_of_reads_a_valid_traceparent_only() -> None:
    assert trace_of(TRACEPARENT) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    for bad in (None, "", "garbage", "00-" + "0" * 32 + "-b7ad6b7169203331-01"):
        trace_id, parent = trace_of(bad)
        assert len(trace_id) == 32 and trace_id != "0" * 32 and parent is None


async def test_a_call_is_a_span_an_audit_entry_and_counted() -> None:
    services = FakeServices()
    meter = Meter(services)
    meter.open()
    trace_id, parent = trace_of(TRACEPARENT)
    call = ToolCall("acme", "key-1", "docs", "docs__search", trace_id, request_bytes=10, response_bytes=20, pii={"EMAIL_ADDRESS": 1})
    with meter.span(call, parent, "7") as span:
        meter.record(call, span)
    await asyncio.sleep(0)
    await meter.close()

    (finished,) = services.exporter.get_finished_spans()
    assert finished.name == "execute_tool docs__search"
    attributes = dict(finished.attributes or {})
    assert attributes["gen_ai.operation.name"] == "execute_tool" and attributes["gen_ai.tool.name"] == "docs__search"
    assert attributes["gen_ai.tool.call.id"] == "7" and attributes["sluicegate.mcp.server"] == "docs"
    assert format(finished.context.trace_id, "032x") == trace_id
    assert finished.parent is not None and format(finished.parent.span_id, "016x") == "b7ad6b7169203331"

    ((actor, action, tenant, target, event),) = services.events
    assert (actor, action, tenant, target) == ("acme/key-1", AUDIT_ACTION, "acme", "mcp:docs/docs__search")
    assert event["status"] == "ok" and event["trace_id"] == trace_id and event["pii"] == {"EMAIL_ADDRESS": 1}
    assert event["request_bytes"] == 10 and event["response_bytes"] == 20 and "arguments" not in event
    # Unregistered on close: a rebuilt plugin registers its own.
    assert b"sluicegate_mcp_tool_calls_total" not in generate_latest(services.registry)


async def test_a_failed_call_marks_its_span_and_metrics() -> None:
    services = FakeServices()
    meter = Meter(services)
    meter.open()
    call = ToolCall("acme", "key-1", "docs", "docs__search", trace_of(None)[0], status="timeout", error="timeout")
    with meter.span(call, None, None) as span:
        meter.record(call, span)
    exposition = generate_latest(services.registry).decode()
    assert 'sluicegate_mcp_tool_calls_total{server="docs",status="timeout",tool="docs__search"} 1.0' in exposition
    await meter.close()
    (finished,) = services.exporter.get_finished_spans()
    assert (finished.attributes or {})["error.type"] == "timeout" and not finished.status.is_ok
    # Without a parent the span starts the trace the audit entry names.
    assert services.events[0][4]["trace_id"] == format(finished.context.trace_id, "032x")


async def test_without_tracing_a_call_is_still_audited() -> None:
    services = FakeServices(tracing=False)
    meter = Meter(services)
    call = ToolCall("acme", "key-1", "docs", "docs__search", "ab" * 16, arguments={"q": "x"})
    with meter.span(call, None, None) as span:
        assert span is None
        meter.record(call, span)
    await meter.close()
    assert services.events[0][4]["arguments"] == {"q": "x"}
