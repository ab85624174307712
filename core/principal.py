"""Who is asking: the principal every step downstream of authentication is scoped by."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from core.config import BudgetConfig, KeyConfig, LimitsConfig, Priority, TenantConfig


@dataclass(slots=True, frozen=True)
class Principal:
    """Who is asking. Everything downstream is scoped by ``tenant``; ``key_id`` is unique within it only."""

    tenant: str
    key_id: str
    scopes: frozenset[str] = frozenset()
    priority: str = "standard"
    # The key's own priority and expiry (None: the tenant's priority; no expiry): what a key it mints inherits.
    key_priority: Priority | None = None
    expires_at: datetime | None = None
    weight: int = 1
    tenant_limits: LimitsConfig = field(default_factory=LimitsConfig)
    key_limits: LimitsConfig | None = None
    tenant_budgets: tuple[BudgetConfig, ...] = ()
    key_budgets: tuple[BudgetConfig, ...] = ()

    def has_scope(self, scope: str) -> bool:
        """``ops:*`` grants every ``ops:`` scope; scopes are otherwise exact."""
        if scope in self.scopes:
            return True
        family = scope.partition(":")[0]
        return f"{family}:*" in self.scopes


def principal_for(tenant: TenantConfig, key: KeyConfig) -> Principal:
    return Principal(
        tenant=tenant.id,
        key_id=key.id,
        scopes=frozenset(key.scopes),
        priority=key.priority or tenant.priority,
        key_priority=key.priority,
        expires_at=key.expires_at,
        weight=tenant.weight,
        tenant_limits=tenant.limits,
        key_limits=key.limits,
        tenant_budgets=tuple(tenant.budgets),
        key_budgets=tuple(key.budgets),
    )
