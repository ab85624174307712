"""OpenTelemetry traces in the GenAI semantic conventions, continuing the caller's W3C trace context.

Each request is one SERVER span named ``{gen_ai.operation.name} {alias}``
(``chat gpt-small``, ``embeddings embed-small``) with its steps and upstream
tries as children (``router.tracing_request``); attribute names follow the
GenAI conventions (``router.tracing_genai``, which says which version), and
Sluicegate's own are under ``sluicegate.*``. No key, prompt or completion is
on a span, unless the tenant opted in to its content (``trace_content``, then
only what its PII policy let out: ``router.tracing_content``).

Off by default, and then it costs one attribute check per request: a client's
``traceparent`` is still passed on to the upstream unchanged, and its trace id
names the request (ledger row, access log).
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from core.config import ConfigError, TelemetryConfig
from router.tracing_genai import OPERATIONS, request_attributes

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from router.context import RequestContext

# version-traceid-parentid-flags, lower-case hex (W3C Trace Context); a later version may add fields.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-.*)?")
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16


def pass_through(ctx: RequestContext, traceparent: str, tracestate: str | None) -> None:
    """Tracing off: a valid client ``traceparent`` goes upstream unchanged, and its trace id names the request."""
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None:
        return
    version, trace_id, span_id, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _NO_TRACE or span_id == _NO_SPAN:
        return
    ctx.trace_id = trace_id
    ctx.traceparent = traceparent
    ctx.tracestate = tracestate


def _exporter(config: TelemetryConfig) -> SpanExporter:
    if config.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # One JSON object per line, as every other line the gateway writes.
        return ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
    if config.exporter == "memory":
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        return InMemorySpanExporter()
    try:
        from router.otlp_export import WireSpanExporter
    except ImportError:
        raise ConfigError(
            "key `telemetry.exporter`: otlp needs the package opentelemetry-exporter-otlp-proto-http (extra `otel`)"
        ) from None
    return WireSpanExporter(endpoint=config.otlp_endpoint) if config.otlp_endpoint else WireSpanExporter()


class Tracing:
    def __init__(self, config: TelemetryConfig) -> None:
        self.enabled = config.tracing
        self.exporter: SpanExporter | None = None
        self._provider: TracerProvider | None = None
        if not self.enabled:
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SimpleSpanProcessor,
        )
        from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
        from opentelemetry.trace import SpanKind, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )

        from router.tracing_request import RequestTrace

        # What each request needs, looked up once (and opentelemetry is imported only when tracing is on).
        self._server = SpanKind.SERVER
        self._in_context = set_span_in_context
        self._request_trace = RequestTrace
        self.exporter = _exporter(config)
        provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBasedTraceIdRatio(config.sample_ratio),
        )
        processor = SimpleSpanProcessor if config.exporter == "memory" else BatchSpanProcessor
        provider.add_span_processor(processor(self.exporter))
        self._provider = provider
        self._tracer = provider.get_tracer("sluicegate")
        self._propagator = TraceContextTextMapPropagator()

    def start(self, ctx: RequestContext, traceparent: str | None, tracestate: str | None = None) -> None:
        """Open the request's root span (from when the route took the request), continuing the client's trace."""
        parent = self._propagator.extract({"traceparent": traceparent, "tracestate": tracestate}) if traceparent else None
        # perf_counter readings (the route's, the steps') --> the wall clock spans are stamped with
        offset = time.time_ns() - time.perf_counter_ns()
        operation = OPERATIONS[ctx.kind]
        request = request_attributes(ctx.kind, ctx.body)
        attributes = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": ctx.alias,
            "gen_ai.request.stream": ctx.stream,
            **request,
            "sluicegate.tenant": ctx.principal.tenant,
            "sluicegate.request_id": ctx.request_id,
            "sluicegate.stream": ctx.stream,
        }
        root = self._tracer.start_span(
            f"{operation} {ctx.alias}",
            context=parent,
            kind=self._server,
            attributes=attributes,
            start_time=int(ctx.started * 1e9) + offset,
        )
        sc = root.get_span_context()
        ctx.trace_id = format(sc.trace_id, "032x")
        if not root.is_recording():
            # Sampled out: nothing is recorded, but the upstream still joins the client's trace.
            ctx.traceparent = f"00-{ctx.trace_id}-{sc.span_id:016x}-{sc.trace_flags:02x}"
            ctx.tracestate = tracestate
            return
        ctx.tracestate = tracestate
        trace = self._request_trace(self._tracer, ctx, root, self._in_context(root), offset, request)
        trace.content = ctx.snapshot.policies.trace_content(ctx.principal.tenant)
        if ctx.authenticated:
            trace.span("auth", ctx.started, ctx.authenticated)
        ctx.trace = trace

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
