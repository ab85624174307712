"""OpenTelemetry traces: one span per request, continuing the caller's `traceparent`.

Off by default, and then it costs one attribute check per request. Span
attributes carry who, what and how much — tenant, model alias, deployment,
status, token counts, routing reason — never prompts, completions or keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.config import ConfigError, TelemetryConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

    from router.context import RequestContext


def _exporter(config: TelemetryConfig) -> SpanExporter:
    if config.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if config.exporter == "memory":
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        return InMemorySpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )
    except ImportError:
        raise ConfigError(
            "key `telemetry.exporter`: otlp needs the package opentelemetry-exporter-otlp-proto-http (extra `otel`)"
        ) from None
    return OTLPSpanExporter(endpoint=config.otlp_endpoint) if config.otlp_endpoint else OTLPSpanExporter()


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
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )

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

    def start(self, ctx: RequestContext, traceparent: str | None) -> None:
        if not self.enabled:
            return
        from opentelemetry.trace import SpanKind

        parent = self._propagator.extract({"traceparent": traceparent}) if traceparent else None
        span = self._tracer.start_span(f"{ctx.route} {ctx.alias}", context=parent, kind=SpanKind.SERVER)
        span.set_attributes({"sluicegate.tenant": ctx.principal.tenant, "gen_ai.request.model": ctx.alias, "sluicegate.stream": ctx.stream})
        ctx.span = span
        span_context = span.get_span_context()
        if span_context.is_valid:
            ctx.trace_id = format(span_context.trace_id, "032x")

    def end(self, ctx: RequestContext) -> None:
        span: Span | None = ctx.span
        if span is None:
            return
        attributes: dict[str, Any] = {
            "http.response.status_code": ctx.status,
            "sluicegate.deployment": ctx.deployment,
            "sluicegate.config.version": ctx.snapshot.version,
        }
        if ctx.arm is not None:
            attributes["sluicegate.canary.arm"] = "mirrored" if ctx.mirror else ctx.arm
        if ctx.route_reason:
            attributes["sluicegate.route_reason"] = ctx.route_reason
        if ctx.usage is not None:
            attributes["gen_ai.usage.input_tokens"] = ctx.usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = ctx.usage.completion_tokens
        if ctx.error:
            attributes["error.type"] = ctx.error
        span.set_attributes(attributes)
        span.end()
        ctx.span = None

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
