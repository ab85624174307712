"""What the gateway offers a plugin (``core.plugin.Services``): its callers, its pipeline, its shared state.

A model call a plugin makes runs the whole pipeline as any request does (PII,
routing, limits, budgets, the ledger, the plugins' own hooks), as the
principal the plugin names: the caller of one of its routes, or a tenant the
plugin acts for (``principal``: the tenant's limits and budgets, no key's).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from core.errors import NotFound
from core.plugin import Completed
from core.principal import Principal
from router.context import RequestContext
from router.tenant_records import TenantNotFound
from router.unary import new_request_id, serve_unary
from serving.base import Kind

if TYPE_CHECKING:
    from core.config import StateConfig
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
