"""API key authentication: keyed hashes only, the request's Principal from here on."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from router.config import BudgetConfig, KeyConfig, LimitsConfig, Priority, TenantConfig
from core.errors import AuthenticationFailed

HASH_PREFIX = "hmac-sha256:"
KEY_PREFIX = "sk-"


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


def hash_api_key(key: str, pepper: bytes = b"") -> str:
    return HASH_PREFIX + hmac.new(pepper, key.encode("utf-8"), hashlib.sha256).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


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


def bearer_token(authorization: str | None) -> str:
    """The token of `Authorization: Bearer <token>`; a 401 for anything else."""
    if not authorization:
        raise AuthenticationFailed(
            "Missing API key: send it as `Authorization: Bearer sk-...`.", code="missing_api_key"
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("The Authorization header must be `Bearer <key>`.", code="invalid_authorization")
    return token
