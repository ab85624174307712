"""What the gateway offers a plugin (``core.plugin.Services``): its callers, its pipeline, its shared state.

A model call a plugin makes runs the whole pipeline as any request does (PII,
routing, limits, budgets, the ledger, the plugins' own hooks), as the
principal the plugin names: the caller of one of its routes, or a tenant the
plugin acts for (``principal``: the tenant's limits and budgets, no key's).
A plugin that handles other traffic (the MCP gateway's tool calls) applies the
serving version's tenant policies to it through the same objects the pipeline
uses: the tenant's config entry, its PII policy (``scan_pii``) and guardrails
(``check_guardrails``), the audit log, the metrics registry and the tracer.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from budgets.ledger_row import LedgerRow
from core.errors import NotFound
from core.plugin import Completed, PiiScan
from core.principal import Principal
from router.context import RequestContext
from router.tenant_records import TenantNotFound
from router.unary import new_request_id, serve_unary
from serving.base import Kind

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer
    from prometheus_client import CollectorRegistry

    from core.config import Config, StateConfig, TenantConfig
    from router.pipeline import Pipeline
    from router.snapshot import Snapshot
    from router.tenant_records import TenantStore

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_KINDS: frozenset[str] = frozenset({"chat", "completion", "embedding"})


class GatewayServices:
    """One plugin's view of the gateway (its own logger and data directory)."""

    def __init__(
        self, plugin: str, state: StateConfig, authenticate: Callable[[str | None], Awaitable[Principal]], tenants: TenantStore,
        pipeline: Callable[[], Pipeline], snapshot: Callable[[], Snapshot], role: str = "serve",
    ) -> None:  # fmt: skip
        self._plugin = plugin
        self.role = role
        self._authenticate = authenticate
        self._tenants = tenants
        self._pipeline = pipeline
        self._snapshot = snapshot
        self.log = logging.getLogger(f"sluicegate.plugin.{plugin}")
        self.redis_url = state.redis()
        self.postgres_dsn = state.dsn()
        self.data_dir = str(Path(state.files_path) / "plugins" / plugin)
        self._tenant_index: tuple[Config, dict[str, TenantConfig]] | None = None

    async def authenticate(self, authorization: str | None) -> Principal:
        return await self._authenticate(authorization)

    async def principal(self, tenant: str) -> Principal:
        try:
            record = await self._tenants.get_tenant(tenant)
        except TenantNotFound:
            raise NotFound(f"No tenant named {tenant!r}.", code="tenant_not_found") from None
        return Principal(
            tenant=record.id, key_id=f"plugin:{self._plugin}", priority=record.priority, weight=record.weight,
            tenant_limits=record.limits, tenant_budgets=tuple(record.budgets),
        )  # fmt: skip

    def task_handlers(self) -> dict[str, Callable[[Any], Awaitable[Any]]]:
        handlers: dict[str, Callable[[Any], Awaitable[Any]]] = {}
        for _, plugin in self._snapshot().plugins.plugins:
            for kind, handler in plugin.task_handlers().items():
                handlers.setdefault(kind, handler)
        return handlers

    def tenant_config(self, tenant: str) -> TenantConfig | None:
        config = self._snapshot().config
        if self._tenant_index is None or self._tenant_index[0] is not config:
            # Indexed once per config version: a plugin may ask on every request.
            self._tenant_index = (config, {entry.id: entry for entry in config.tenants})
        return self._tenant_index[1].get(tenant)

    async def scan_pii(self, tenant: str, texts: list[str]) -> PiiScan:
        """The tenant's policy (its own, else ``policies.pii``) over ``texts``, scanned as one completion prompt."""
        policy = self._snapshot().policies.pii(tenant)
        if policy is None or not texts:
            return PiiScan(texts=list(texts), counts={}, action="off")
        from policies.pii import scan_request

        result = await scan_request("completion", {"prompt": list(texts)}, policy)
        scanned = result.body.get("prompt")
        out = [t if isinstance(t, str) else "" for t in scanned] if isinstance(scanned, list) else list(texts)
        return PiiScan(texts=out, counts=dict(result.counts), action=policy.action)

    async def check_guardrails(self, tenant: str, texts: list[str]) -> str | None:
        """The tenant's own guardrails (no alias's), ``pre`` mode, each text a ``tool_result``."""
        snapshot = self._snapshot()
        index, step = snapshot.guardrails, self._pipeline().guardrails
        if index is None or step is None or not texts:
            return None
        guardrails = index.get(tenant, "", lambda configs: step.build(snapshot, configs))
        if guardrails is None or not guardrails.pre:
            return None
        from policies.guardrails_types import Text

        result = await guardrails.pre.check([Text((i,), text, "tool_result") for i, text in enumerate(texts)])
        blocked = result.blocked
        return None if blocked is None else f"{blocked.guardrail}/{blocked.category or 'blocked'}"

    async def record_event(self, actor: str, action: str, tenant: str | None, target: str, event: dict[str, Any]) -> None:
        await self._tenants.record_event(actor, action, tenant, target, event)

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
        """A ledger row of kind tool: model ``mcp:<server>/<tool>``, deployment ``mcp:<server>``, provider ``mcp``, no cost.

        Its status is 200 for a call that answered, 502 otherwise, with the reason (a fixed word, never a message) in ``error``.
        """
        ledger = self._pipeline().billing.ledger
        if ledger is None:
            return
        started_us = int(started_s * 1_000_000)
        finished_us = started_us + int(duration_s * 1_000_000)
        ok = status == "ok"
        ledger.record(LedgerRow(
            f"mcp-{secrets.token_hex(12)}", started_us, tenant, key_id, f"mcp:{server}/{tool}", f"mcp:{server}", "mcp",
            0, 0, 0, 0, 200 if ok else 502, finished_us, round(duration_s * 1000, 3), None, None if ok else status, None, {},
            trace_id, False, self._snapshot().version, None,
        ))  # fmt: skip

    def metrics_registry(self) -> CollectorRegistry:
        return self._pipeline().metrics.registry

    def tracer(self) -> Tracer | None:
        tracing = self._pipeline().tracing
        found: Tracer | None = getattr(tracing, "_tracer", None) if tracing.enabled else None
        return found

    async def complete(self, principal: Principal, body: dict[str, Any], *, kind: str = "chat", trace_id: str | None = None) -> Completed:
        """One model call through the pipeline; every failure is a ``Completed`` with the error envelope, never raised."""
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {sorted(_KINDS)}")
        snapshot = self._snapshot()
        alias = body.get("model")
        ctx = RequestContext(
            request_id=new_request_id(), snapshot=snapshot, principal=principal, kind=cast(Kind, kind),
            route=f"plugin:{self._plugin}", alias=alias if isinstance(alias, str) else "", body={**body, "stream": False},
        )  # fmt: skip
        traceparent = None
        if trace_id is not None and _TRACE_ID.fullmatch(trace_id) and trace_id != "0" * 32:
            # A parent of our own making in the caller's trace: the call's span (or, tracing off, its ledger row) joins it.
            traceparent = f"00-{trace_id}-{os.urandom(8).hex()}-01"
        outcome = await serve_unary(self._pipeline(), ctx, self.log, traceparent)
        return Completed(status=outcome.status, body=outcome.body, request_id=outcome.request_id)
