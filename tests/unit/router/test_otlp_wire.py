"""Spans written as OTLP bytes by ``router.otlp_wire`` mean what opentelemetry's own encoder builds."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._internal import _encode_value
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, set_span_in_context
from opentelemetry.trace.span import TraceState

from router.otlp_export import WireSpanExporter
from router.otlp_wire import _any_value, encode_spans

REMOTE = SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "x1")]))


def _spans(record: Any) -> tuple[ReadableSpan, ...]:
    """The spans ``record(tracer)`` made, finished, from a provider of their own."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "sluicegate", "deployment.environment": "test"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    record(provider.get_tracer("sluicegate", "1.0", schema_url="https://opentelemetry.io/schemas/1.26.0"))
    return memory.get_finished_spans()


def _request(tracer: Any) -> None:
    """One request's spans as the gateway makes them, with every kind of field a span can carry."""
    root = tracer.start_span(
        "chat fake-model", context=set_span_in_context(NonRecordingSpan(REMOTE)), kind=SpanKind.SERVER,
        attributes={
            "gen_ai.operation.name": "chat", "gen_ai.request.stream": False, "gen_ai.request.temperature": 0.5,
            "gen_ai.request.max_tokens": 12, "gen_ai.response.finish_reasons": ("stop",), "negative": -5, "empty": "",
            "zero": 0, "zero.float": 0.0, "ints": (1, 2, 3), "flags": (True, False), "large": 2**62, "text": "héllo ✓",
        },
    )  # fmt: skip
    parent = set_span_in_context(root)
    for step in ("auth", "routing", "admission"):
        tracer.start_span(step, context=parent).end()
    attempt = tracer.start_span(
        "chat fake-model", context=parent, kind=SpanKind.CLIENT, attributes={"server.port": 8080}, links=[Link(REMOTE, {"why": "retry"})]
    )
    attempt.add_event("retry", {"attempt": 2, "backoff_s": 0.25})
    attempt.add_event("no attributes")
    attempt.set_status(Status(StatusCode.ERROR, "upstream failed"))
    attempt.end()
    settlement = tracer.start_span("settlement", context=parent, kind=SpanKind.INTERNAL)
    settlement.set_status(Status(StatusCode.OK))
    settlement.end()
    tracer.start_span("producer", kind=SpanKind.PRODUCER).end()  # no parent
    root.set_attribute("http.response.status_code", 200)
    root.end()


def test_a_requests_spans_are_the_same_message() -> None:
    spans = _spans(lambda tracer: [_request(tracer) for _ in range(3)])
    assert len(spans) == 21
    assert ExportTraceServiceRequest.FromString(encode_spans(spans)) == official(spans)


def test_no_spans_is_an_empty_request() -> None:
    assert encode_spans(()) == b"" == official(()).SerializeToString()


def test_an_attribute_that_cannot_be_encoded_is_left_out_as_opentelemetrys_encoder_does(caplog: pytest.LogCaptureFixture) -> None:
    spans = _spans(lambda tracer: tracer.start_span("s", attributes={"kept": 1}).end())
    spans[0]._attributes = {"kept": 1, "outside.int64": 2**64, "after": "x"}  # past what the SDK would let in
    assert ExportTraceServiceRequest.FromString(encode_spans(spans)) == official(spans)
    assert "outside.int64" in caplog.text


_scalars = st.one_of(
    st.text(max_size=20), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False), st.binary(max_size=20),
)  # fmt: skip
_values = st.recursive(
    _scalars | st.none(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_any_value_is_what_opentelemetry_encodes(value: Any) -> None:
    assert AnyValue.FromString(_any_value(value)) == _encode_value(value)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12), st.one_of(_scalars, st.lists(st.text(max_size=5), max_size=3)), max_size=8))
def test_any_attributes_are_the_same_message(attributes: dict[str, Any]) -> None:
    spans = _spans(lambda tracer: tracer.start_span("s", attributes=attributes).end())
    assert ExportTraceServiceRequest.FromString(encode_spans(spans)) == official(spans)


# --- the exporter -----------------------------------------------------------------------


class _Collector(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    status = 200
    received: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        _Collector.received.append(self.rfile.read(int(self.headers["content-length"])))
        self.send_response(_Collector.status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        return


@pytest.fixture
def collector() -> Iterator[str]:
    _Collector.received, _Collector.status = [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    server.shutdown()


def test_the_exporter_posts_the_batch_to_the_collector(collector: str) -> None:
    spans = _spans(_request)
    exporter = WireSpanExporter(endpoint=collector, timeout=5)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    (body,) = _Collector.received
    assert ExportTraceServiceRequest.FromString(body) == official(spans)
    exporter.shutdown()
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert len(_Collector.received) == 1


def test_a_batch_the_collector_refuses_or_over_the_size_limit_fails(collector: str) -> None:
    spans = _spans(_request)
    _Collector.status = 400  # not retried: a client error
    assert WireSpanExporter(endpoint=collector, timeout=5).export(spans) is SpanExportResult.FAILURE
    assert len(_Collector.received) == 1
    assert WireSpanExporter(endpoint=collector, timeout=5, max_request_size=100).export(spans) is SpanExportResult.FAILURE
    assert len(_Collector.received) == 1  # never sent
