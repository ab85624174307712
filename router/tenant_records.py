"""Tenants and API keys: the records, the store Protocol and what both stores share.

Two stores implement ``TenantStore``: the config file (embedded default,
``router.tenants_file``) and PostgreSQL (production, ``router.tenants_postgres``);
``router.tenants.open_tenant_store`` picks one. A store keeps only keyed hashes
of API keys; a plaintext key exists once, in the answer to ``create_key``. A key
id is unique within its tenant only: another tenant's ids are neither refused
nor reserved, so a key is named by tenant and id. Every change appends an audit
entry whose old and new values never hold a hash or a key.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec

from core.config import (
    BudgetConfig,
    KeyConfig,
    LimitsConfig,
    Name,
    PositiveInt,
    Priority,
    TenantConfig,
)
from core.errors import GatewayError, InvalidRequest, NotFound
from core.principal import Principal, principal_for
from router.auth import hash_api_key, new_api_key

UNSET = msgspec.UNSET
UnsetType = msgspec.UnsetType

# The admin API's scopes: every tenant (``ops:*`` grants it too), or the key's own tenant.
OPS_SCOPE = "ops:admin"
READ_SCOPE = "tenant:read"
WRITE_SCOPE = "tenant:write"


class TenantNotFound(NotFound):
    code = "tenant_not_found"

    @classmethod
    def named(cls, tenant_id: str) -> TenantNotFound:
        # One wording for "absent" and "not yours", so a 404 reveals nothing.
        return cls(f"No tenant {tenant_id!r}.")


class KeyNotFound(NotFound):
    code = "key_not_found"


class AlreadyExists(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "already_exists"


class StoreUnavailable(GatewayError):
    """The tenant store cannot be reached in time; callers fail closed."""

    status = 503
    type = "server_error"
    code = "tenant_store_unavailable"
    retryable = True


class Tenant(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str = ""
    disabled: bool = False
    priority: Priority = "standard"
    weight: int = 1
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    budgets: list[BudgetConfig] = msgspec.field(default_factory=list)
    created_at: datetime
    updated_at: datetime


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """A key as listed: never its hash, never its plaintext."""

    id: str
    tenant: str
    scopes: list[str] = msgspec.field(default_factory=list)
    expires_at: datetime | None = None
    revoked: bool = False
    revoked_at: datetime | None = None
    priority: Priority | None = None
    limits: LimitsConfig | None = None
    budgets: list[BudgetConfig] = msgspec.field(default_factory=list)
    created_at: datetime


class CreatedKey(msgspec.Struct, frozen=True, kw_only=True):
    key: str  # the plaintext, shown this once
    record: ApiKey


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    at: datetime
    actor: str
    action: str
    tenant: str | None
    target: str
    old: dict[str, Any] | None = None
    new: dict[str, Any] | None = None


class _Input(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class TenantCreate(_Input):
    id: Name
    name: str = ""
    disabled: bool = False
    priority: Priority = "standard"
    weight: PositiveInt = 1
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    budgets: list[BudgetConfig] = msgspec.field(default_factory=list)


class TenantUpdate(_Input):
    """A partial update: fields left out keep their value."""

    name: str | UnsetType = UNSET
    disabled: bool | UnsetType = UNSET
    priority: Priority | UnsetType = UNSET
    weight: PositiveInt | UnsetType = UNSET
    limits: LimitsConfig | UnsetType = UNSET
    budgets: list[BudgetConfig] | UnsetType = UNSET

    def fields_set(self) -> set[str]:
        return {f for f in self.__struct_fields__ if getattr(self, f) is not UNSET}


class KeyCreate(_Input):
    id: Name | None = None  # generated when left out
    scopes: list[str] = msgspec.field(default_factory=list)
    expires_at: datetime | None = None
    priority: Priority | None = None
    limits: LimitsConfig | None = None
    budgets: list[BudgetConfig] = msgspec.field(default_factory=list)


class TenantStore(Protocol):
    """Tenants, keys and the audit log. ``actor`` names who made a change ("cli", "<tenant>/<key id>").

    Errors are gateway errors: ``TenantNotFound``/``KeyNotFound`` (404),
    ``AlreadyExists`` (409), ``InvalidRequest`` (400), ``StoreUnavailable`` (503).
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def authenticate(self, key_hash: str) -> Principal | None:
        """The principal for a usable key; None when unknown, revoked, expired or its tenant disabled.

        Raises ``StoreUnavailable`` when the answer cannot be known in time.
        """
        ...

    async def list_tenants(self) -> list[Tenant]: ...

    async def get_tenant(self, tenant_id: str) -> Tenant: ...

    async def create_tenant(self, spec: TenantCreate, actor: str) -> Tenant: ...

    async def update_tenant(self, tenant_id: str, patch: TenantUpdate, actor: str) -> Tenant: ...

    async def disable_tenant(self, tenant_id: str, actor: str) -> Tenant: ...

    async def create_key(self, tenant_id: str, spec: KeyCreate, actor: str) -> CreatedKey: ...

    async def list_keys(self, tenant_id: str) -> list[ApiKey]: ...

    async def revoke_key(self, tenant_id: str, key_id: str, actor: str) -> ApiKey: ...

    async def list_audit(self, tenant: str | None = None, limit: int = 100) -> list[AuditEntry]: ...

    async def record_event(self, actor: str, action: str, tenant: str | None, target: str, new: dict[str, Any]) -> None:
        """Append an entry that no change through this store made: ``actor`` "system" (a budget threshold reached).

        ``new`` is the event as JSON-ready builtins and must hold no secret."""
        ...


# --- shared by both stores ---------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(UTC)


def actor_of(principal: Principal) -> str:
    return f"{principal.tenant}/{principal.key_id}"


def new_tenant(spec: TenantCreate, now: datetime) -> Tenant:
    fields = msgspec.structs.asdict(spec)
    return Tenant(**fields, created_at=now, updated_at=now)


def patched(tenant: Tenant, patch: TenantUpdate, now: datetime) -> Tenant:
    changes = {f: getattr(patch, f) for f in patch.fields_set()}
    return msgspec.structs.replace(tenant, **changes, updated_at=now)


def new_key(tenant_id: str, spec: KeyCreate, pepper: bytes, now: datetime) -> tuple[str, str, ApiKey]:
    """(plaintext, keyed hash, record) for a fresh key; a past expiry is refused."""
    if spec.expires_at is not None and as_utc(spec.expires_at) <= now:
        raise InvalidRequest("`expires_at` is in the past.", param="expires_at")
    plaintext = new_api_key()
    record = ApiKey(
        id=spec.id if spec.id is not None else f"key-{secrets.token_hex(6)}",
        tenant=tenant_id,
        scopes=sorted(set(spec.scopes)),
        expires_at=as_utc(spec.expires_at) if spec.expires_at is not None else None,
        priority=spec.priority,
        limits=spec.limits,
        budgets=list(spec.budgets),
        created_at=now,
    )
    return plaintext, hash_api_key(plaintext, pepper), record


def as_utc(value: datetime) -> datetime:
    # A timestamp without a zone is taken as UTC rather than the host's zone.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def principal_of(tenant: Tenant, key: ApiKey, key_hash: str) -> Principal:
    tenant_config = TenantConfig(
        id=tenant.id,
        name=tenant.name,
        priority=tenant.priority,
        weight=tenant.weight,
        limits=tenant.limits,
        budgets=list(tenant.budgets),
    )
    key_config = KeyConfig(
        id=key.id,
        hash=key_hash,
        scopes=list(key.scopes),
        expires_at=key.expires_at,
        priority=key.priority,
        limits=key.limits,
        budgets=list(key.budgets),
    )
    return principal_for(tenant_config, key_config)


def usable(tenant: Tenant, key: ApiKey, now: datetime) -> bool:
    expired = key.expires_at is not None and key.expires_at <= now
    return not (key.revoked or tenant.disabled or expired)


def snapshot(record: Tenant | ApiKey) -> dict[str, Any]:
    """An audit value: the record as JSON-ready builtins (records carry no secrets)."""
    value: dict[str, Any] = msgspec.to_builtins(record)
    return value
