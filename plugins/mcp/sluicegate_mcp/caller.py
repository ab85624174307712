"""Who sent an MCP message: the principal the HTTP layer authenticated, their grants, their trace context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR

from core.plugin import Services
from core.principal import Principal
from sluicegate_mcp.grants import Access, access_for

# Where the HTTP layer puts the authenticated principal in the ASGI scope.
SCOPE_KEY = "sluicegate.principal"


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    access: Access
    traceparent: str | None
    session_id: str | None

    @property
    def tenant(self) -> str:
        return self.principal.tenant


def caller_of(request: Any, services: Services) -> Caller:
    """The caller of the HTTP request that carried a message (each request is authenticated on its own)."""
    scope = getattr(request, "scope", None)
    principal = scope.get(SCOPE_KEY) if isinstance(scope, dict) else None
    if not isinstance(principal, Principal):
        raise MCPError(INTERNAL_ERROR, "The request carries no authenticated caller.")
    headers = request.headers
    access = access_for(services.tenant_config(principal.tenant), principal.key_id)
    return Caller(principal, access, headers.get("traceparent"), headers.get("mcp-session-id"))
