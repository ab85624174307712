"""A ``Services`` for the mcp plugin's unit tests: a PII policy that finds one address, an audit log in a list."""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry

from core.config import TenantConfig
from core.plugin import PiiScan
from core.principal import Principal

EMAIL = "alice@example.com"


class FakeServices:
    def __init__(self, action: str = "redact", tracing: bool = True) -> None:
        self.log = logging.getLogger("sluicegate.plugin.mcp.test")
        self.role = "serve"
        self.redis_url: str | None = None
        self.postgres_dsn: str | None = None
        self.data_dir = "."
        self.action = action
        self.events: list[tuple[str, str, str | None, str, dict[str, Any]]] = []
        self.tool_calls: list[tuple[str, str, str, str, str, str | None]] = []
        self.registry = CollectorRegistry()
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self._tracer = provider.get_tracer("test") if tracing else None

    async def authenticate(self, authorization: str | None) -> Principal:
        raise NotImplementedError

    async def principal(self, tenant: str) -> Principal:
        raise NotImplementedError

    async def complete(self, principal: Principal, body: dict[str, Any], *, kind: str = "chat", trace_id: str | None = None) -> Any:
        raise NotImplementedError

    def task_handlers(self) -> dict[str, Any]:
        return {}

    def tenant_config(self, tenant: str) -> TenantConfig | None:
        return None

    async def scan_pii(self, tenant: str, texts: list[str]) -> PiiScan:
        found = sum(t.count(EMAIL) for t in texts)
        if self.action == "off" or not found:
            return PiiScan(texts=list(texts), counts={}, action=self.action)
        if self.action in ("block", "restrict"):
            return PiiScan(texts=list(texts), counts={"EMAIL_ADDRESS": found}, action=self.action)
        return PiiScan(texts=[t.replace(EMAIL, "<EMAIL_ADDRESS_1>") for t in texts], counts={"EMAIL_ADDRESS": found}, action=self.action)

    async def check_guardrails(self, tenant: str, texts: list[str]) -> str | None:
        return "no-forbidden/pattern_0" if any("FORBIDDEN" in t for t in texts) else None

    async def record_event(self, actor: str, action: str, tenant: str | None, target: str, event: dict[str, Any]) -> None:
        self.events.append((actor, action, tenant, target, event))

    def record_tool_call(
        self,
        tenant: str,
        key_id: str,
        server: str,
        tool: str,
        *,
        status: str,
        started_s: float,
        duration_s: float,
        trace_id: str | None,
    ) -> None:
        self.tool_calls.append((tenant, key_id, server, tool, status, trace_id))

    def metrics_registry(self) -> CollectorRegistry:
        return self.registry

    def tracer(self) -> Tracer | None:
        return self._tracer
