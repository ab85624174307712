"""Each tenant's routing, PII and trace-content policies, from the config (defaults under `policies`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from core.config import Config, ConfigError, RoutingPolicy
from core.config_cache import TenantCacheConfig

if TYPE_CHECKING:
    from policies.pii import PiiPolicy


def _pii(raw: dict[str, object] | None, where: str) -> PiiPolicy | None:
    if raw is None:
        return None
    from policies.pii import PiiPolicy

    try:
        policy = msgspec.convert(raw, PiiPolicy)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"key `{where}`: {exc}") from None
    return None if policy.action == "off" else policy


class TenantPolicies:
    def __init__(self, config: Config) -> None:
        self._default_routing = config.policies.routing
        self._default_pii = _pii(config.policies.pii, "policies.pii")
        self._routing: dict[str, RoutingPolicy] = {}
        self._pii: dict[str, PiiPolicy | None] = {}
        # Tenants whose prompts and completions may be recorded on their spans (`trace_content`).
        self._trace_content = frozenset(tenant.id for tenant in config.tenants if tenant.trace_content)
        # Tenants whose part in the response cache is not the default (their own entries).
        self._cache = {tenant.id: tenant.cache for tenant in config.tenants if tenant.cache is not None}
        for i, tenant in enumerate(config.tenants):
            if tenant.routing is not None:
                self._routing[tenant.id] = tenant.routing
            if tenant.pii is not None:
                self._pii[tenant.id] = _pii(tenant.pii, f"tenants[{i}].pii")

    def routing(self, tenant: str) -> RoutingPolicy:
        return self._routing.get(tenant, self._default_routing)

    async def preload(self) -> None:
        """Load the analyzers the policies need now, not on a tenant's first request."""
        policies = [p for p in [self._default_pii, *self._pii.values()] if p is not None]
        if not policies:
            return
        from policies.pii import preload

        for policy in policies:
            await preload(policy)

    def pii(self, tenant: str) -> PiiPolicy | None:
        """None when PII scanning is off for the tenant: it then costs nothing."""
        return self._pii.get(tenant, self._default_pii)

    def trace_content(self, tenant: str) -> bool:
        """Whether the tenant opted in to prompts and completions on its trace spans (off unless it did)."""
        return tenant in self._trace_content

    def cache(self, tenant: str) -> TenantCacheConfig | None:
        """The tenant's part in the response cache; None: the default (it takes part, with entries of its own)."""
        return self._cache.get(tenant)
