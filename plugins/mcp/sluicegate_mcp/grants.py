"""Who may see and call what: a tenant's ``mcp_tools`` grants, narrowed by its key's.

A grant is ``server/tool`` (that tool) or ``server/*`` (every tool, prompt and
resource of the server). Nothing is granted by default. A key with grants of
its own reaches only what both its tenant's and its own grants allow; a key
without (``mcp_tools`` unset, a JWT, a key made through the admin API) has
its tenant's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core.config import TenantConfig

WILDCARD = "*"


@dataclass(frozen=True, slots=True)
class GrantSet:
    """Grants as (server, tool) pairs; ``tool`` is ``*`` for a whole server."""

    pairs: frozenset[tuple[str, str]]

    @classmethod
    def parse(cls, grants: Iterable[str]) -> GrantSet:
        pairs = set()
        for grant in grants:
            server, sep, tool = grant.partition("/")
            if sep and server and tool:
                pairs.add((server, tool))
        return cls(frozenset(pairs))

    def allows_tool(self, server: str, tool: str) -> bool:
        return (server, WILDCARD) in self.pairs or (server, tool) in self.pairs

    def allows_server(self, server: str) -> bool:
        return (server, WILDCARD) in self.pairs

    def servers(self) -> frozenset[str]:
        """Servers this set grants anything on."""
        return frozenset(server for server, _ in self.pairs)


@dataclass(frozen=True, slots=True)
class Access:
    """One caller's grants: its tenant's, and its key's when the key narrows them."""

    tenant: GrantSet
    key: GrantSet | None = None

    def tool(self, server: str, tool: str) -> bool:
        """Whether the caller may see and call ``tool`` of ``server``."""
        return self.tenant.allows_tool(server, tool) and (self.key is None or self.key.allows_tool(server, tool))

    def whole_server(self, server: str) -> bool:
        """Whether the caller may see the server's prompts and resources (a ``server/*`` grant on both levels)."""
        return self.tenant.allows_server(server) and (self.key is None or self.key.allows_server(server))

    def servers(self) -> frozenset[str]:
        """The servers the caller may reach anything on."""
        found = self.tenant.servers()
        return found if self.key is None else found & self.key.servers()


NO_ACCESS = Access(GrantSet(frozenset()), None)


def access_for(tenant: TenantConfig | None, key_id: str) -> Access:
    """The access of key ``key_id`` of ``tenant`` (no tenant entry in the config: none)."""
    if tenant is None:
        return NO_ACCESS
    narrowing = next((k.mcp_tools for k in tenant.keys if k.id == key_id), None)
    return Access(GrantSet.parse(tenant.mcp_tools), None if narrowing is None else GrantSet.parse(narrowing))
