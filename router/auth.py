"""API key authentication: keyed hashes only, the request's Principal from here on."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from router.config import BudgetConfig, Config, KeyConfig, LimitsConfig, TenantConfig
from router.errors import AuthenticationFailed

HASH_PREFIX = "hmac-sha256:"
KEY_PREFIX = "sk-"


@dataclass(slots=True, frozen=True)
class Principal:
    """Who is asking. Everything downstream is scoped by ``tenant``."""

    tenant: str
    key_id: str
    scopes: frozenset[str] = frozenset()
    priority: str = "standard"
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


@dataclass(slots=True, frozen=True)
class _KeyRecord:
    principal: Principal
    digest: str
    expires_at: float | None


def principal_for(tenant: TenantConfig, key: KeyConfig) -> Principal:
    return Principal(
        tenant=tenant.id,
        key_id=key.id,
        scopes=frozenset(key.scopes),
        priority=key.priority or tenant.priority,
        weight=tenant.weight,
        tenant_limits=tenant.limits,
        key_limits=key.limits,
        tenant_budgets=tuple(tenant.budgets),
        key_budgets=tuple(key.budgets),
    )


class KeyStore:
    """Keys from the config file, looked up by their keyed hash."""

    def __init__(self, config: Config, pepper: bytes = b"") -> None:
        self._pepper = pepper
        self._by_hash: dict[str, _KeyRecord] = {}
        for tenant in config.tenants:
            if tenant.disabled:
                continue
            for key in tenant.keys:
                if key.disabled:
                    continue
                expires = key.expires_at.timestamp() if key.expires_at is not None else None
                self._by_hash[key.hash] = _KeyRecord(principal_for(tenant, key), key.hash, expires)

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, authorization: str | None) -> Principal:
        token = _bearer(authorization)
        digest = hash_api_key(token, self._pepper)
        record = self._by_hash.get(digest)
        # The dict lookup already matched on the digest; compare again in constant
        # time so the final decision does not depend on early-exit comparison.
        if record is None or not hmac.compare_digest(record.digest, digest):
            raise AuthenticationFailed("Incorrect API key provided.")
        if record.expires_at is not None and record.expires_at <= time.time():
            raise AuthenticationFailed("The API key has expired.", code="expired_api_key")
        return record.principal


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed(
            "Missing API key: send it as `Authorization: Bearer sk-...`.", code="missing_api_key"
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("The Authorization header must be `Bearer <key>`.", code="invalid_authorization")
    return token
