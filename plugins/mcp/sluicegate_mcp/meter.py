"""Every tool call, counted and kept: Prometheus metrics, an ``execute_tool`` span, an audit entry and a ledger row.

The audit entry is the call's metered record: tenant, key, server, tool,
status, duration, sizes, trace id, the PII entity counts (types, never
values), and the arguments only for a tenant in ``record_arguments`` (after
its PII policy). Nothing of a result is kept. Spans follow the OpenTelemetry
GenAI conventions (``execute_tool {tool}``, ``gen_ai.operation.name``
``execute_tool``, ``gen_ai.tool.name``) and continue the client's
``traceparent``.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from core.plugin import Services

AUDIT_ACTION = "mcp.tool_call"
AUDIT_TIMEOUT_S = 5.0
# Audit writes waiting at once; beyond it an entry is dropped (and counted) rather than held in memory.
MAX_PENDING_AUDIT = 1000
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
SIZE_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)


@dataclass(slots=True)
class ToolCall:
    """One tool call as metered."""

    tenant: str
    key_id: str
    server: str
    tool: str
    trace_id: str
    status: str = "ok"
    duration_s: float = 0.0
    request_bytes: int = 0
    response_bytes: int = 0
    error: str | None = None
    pii: dict[str, int] = field(default_factory=dict)
    arguments: dict[str, Any] | None = None

    def event(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "key": self.key_id, "server": self.server, "tool": self.tool, "status": self.status,
            "duration_ms": round(self.duration_s * 1000, 3), "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes, "trace_id": self.trace_id,
        }  # fmt: skip
        if self.error is not None:
            entry["error"] = self.error
        if self.pii:
            entry["pii"] = dict(self.pii)
        if self.arguments is not None:
            entry["arguments"] = self.arguments
        return entry


class _Collector(Collector):
    """This instance's metrics, registered as one collector in the gateway's registry (and taken out on close)."""

    def __init__(self, parts: Iterable[Counter | Histogram]) -> None:
        self._parts = tuple(parts)

    def collect(self) -> Iterable[Metric]:
        for part in self._parts:
            yield from part.collect()


def trace_of(traceparent: str | None) -> tuple[str, str | None]:
    """(trace id, parent span id) of a valid W3C ``traceparent``; else a new trace id and no parent."""
    found = _TRACEPARENT.match(traceparent.strip().lower()) if traceparent else None
    if found is None or found.group(1) == "0" * 32:
        return secrets.token_hex(16), None
    return found.group(1), found.group(2)


class Meter:
    def __init__(self, services: Services) -> None:
        self._services = services
        self.calls = Counter(
            "sluicegate_mcp_tool_calls_total", "MCP tool calls, by server, tool and status.", ("server", "tool", "status"), registry=None
        )
        self.duration = Histogram(
            "sluicegate_mcp_tool_call_duration_seconds", "MCP tool call duration, by server and status.",
            ("server", "status"), buckets=DURATION_BUCKETS, registry=None,
        )  # fmt: skip
        self.result_bytes = Histogram(
            "sluicegate_mcp_tool_result_bytes", "Size of MCP tool results received, by server.", ("server",),
            buckets=SIZE_BUCKETS, registry=None,
        )  # fmt: skip
        self.audit_dropped = Counter(
            "sluicegate_mcp_audit_dropped_total", "MCP audit entries not written (failed or overflowing).", registry=None
        )
        self._collector = _Collector((self.calls, self.duration, self.result_bytes, self.audit_dropped))
        self._pending: set[asyncio.Task[None]] = set()
        self._registered = False

    def open(self) -> None:
        self._services.metrics_registry().register(self._collector)
        self._registered = True

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=AUDIT_TIMEOUT_S)
        if self._registered:
            self._services.metrics_registry().unregister(self._collector)
            self._registered = False

    @contextmanager
    def span(self, call: ToolCall, parent_span_id: str | None, call_id: str | None) -> Iterator[Any]:
        """An ``execute_tool`` span around the call, when the gateway traces (else nothing)."""
        tracer = self._services.tracer()
        if tracer is None:
            yield None
            return
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, set_span_in_context

        parent = None
        if parent_span_id is not None:
            remote = SpanContext(int(call.trace_id, 16), int(parent_span_id, 16), is_remote=True, trace_flags=TraceFlags(1))
            parent = set_span_in_context(NonRecordingSpan(remote))
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": call.tool, "gen_ai.tool.type": "extension",
            "sluicegate.tenant": call.tenant, "sluicegate.mcp.server": call.server,
        }  # fmt: skip
        if call_id is not None:
            attributes["gen_ai.tool.call.id"] = call_id
        with tracer.start_as_current_span(
            f"execute_tool {call.tool}", context=parent, kind=SpanKind.INTERNAL, attributes=attributes
        ) as span:
            if parent is None:
                call.trace_id = format(span.get_span_context().trace_id, "032x")
            yield span

    def not_found(self) -> None:
        """A call of a tool the caller may not see (or that exists nowhere): counted without its name (unbounded)."""
        self.calls.labels("", "", "not_found").inc()

    def record(self, call: ToolCall, span: Any) -> None:
        """Count the finished call, close its span's details, and write its audit entry in the background."""
        self.calls.labels(call.server, call.tool, call.status).inc()
        self.duration.labels(call.server, call.status).observe(call.duration_s)
        if call.response_bytes:
            self.result_bytes.labels(call.server).observe(call.response_bytes)
        try:  # the ledger row: written to the ledger's buffer at once, never waited on
            self._services.record_tool_call(
                call.tenant, call.key_id, call.server, call.tool, status=call.status,
                started_s=time.time() - call.duration_s, duration_s=call.duration_s, trace_id=call.trace_id or None,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a row not written is logged; the call's answer stands
            self._services.log.warning("mcp ledger row not written (%s)", type(exc).__name__)
        if span is not None and call.status != "ok":
            from opentelemetry.trace import Status, StatusCode

            span.set_attribute("error.type", call.status)
            span.set_status(Status(StatusCode.ERROR))
        if len(self._pending) >= MAX_PENDING_AUDIT:
            self.audit_dropped.inc()
            return
        task = asyncio.create_task(self._audit(call))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _audit(self, call: ToolCall) -> None:
        actor = f"{call.tenant}/{call.key_id}"
        try:
            async with asyncio.timeout(AUDIT_TIMEOUT_S):
                await self._services.record_event(actor, AUDIT_ACTION, call.tenant, f"mcp:{call.server}/{call.tool}", call.event())
        except Exception as exc:  # noqa: BLE001 - a lost audit entry is counted and logged, the call's answer stands
            self.audit_dropped.inc()
            self._services.log.warning("mcp audit entry not written (%s)", type(exc).__name__)
