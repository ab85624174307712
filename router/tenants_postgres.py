"""The production tenant store: PostgreSQL through asyncpg, shared by every replica.

Requests are authenticated from a per-replica cache (``router.revocation``); a
miss costs one query. Every query runs under ``timeout_s``: when PostgreSQL is
slow or down, cached keys keep working up to ``stale_ttl_s`` after their last
validation and everything else fails closed with ``StoreUnavailable`` (503).
Changes are written in one transaction with their audit row, then the local
cache is evicted and the change is published to the other replicas.

The tables are under row-level security (``core.pg_scope``, migration 1003):
every unit of work is one transaction scoped to the tenant it names, and to
every tenant (``ALL``) only for operators' listings and authentication by key
hash. The gateway connects as an ordinary role, since a superuser bypasses the
policies; it needs SELECT, INSERT and UPDATE on ``tenants`` and ``api_keys``,
SELECT and INSERT on ``audit_log`` and USAGE on ``audit_log_id_seq``, and
SELECT on ``schema_migrations`` (the owner applies the migrations).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import msgspec

from core.migrate import apply_migrations
from core.pg_scope import scope
from core.principal import Principal
from router.migrate import TENANCY
from router.revocation import KeyCache, RevocationBus
from router.tenant_records import (
    AlreadyExists,
    ApiKey,
    AuditEntry,
    CreatedKey,
    KeyCreate,
    KeyNotFound,
    StoreUnavailable,
    Tenant,
    TenantCreate,
    TenantNotFound,
    TenantUpdate,
    new_key,
    new_tenant,
    patched,
    principal_of,
    snapshot,
    usable,
    utcnow,
)

log = logging.getLogger("sluicegate.tenants")
T = TypeVar("T")

_TENANT = "id, name, disabled, priority, weight, limits, budgets, created_at, updated_at"
_KEY = "id, tenant_id AS tenant, scopes, expires_at, revoked_at IS NOT NULL AS revoked, revoked_at, priority, limits, budgets, created_at"
# One round trip for an unknown key: the key and its tenant together.
_KEY_BY_HASH = (
    f"SELECT k.*, to_jsonb(t) AS t FROM (SELECT {_KEY}, hash FROM api_keys) k JOIN tenants t ON t.id = k.tenant WHERE k.hash = $1"
)
_UPDATE_TENANT = (
    "UPDATE tenants SET name = $2, disabled = $3, priority = $4, weight = $5, limits = $6, budgets = $7,"
    f" updated_at = $8 WHERE id = $1 RETURNING {_TENANT}"
)
_INSERT_KEY = (
    "INSERT INTO api_keys (id, tenant_id, hash, scopes, expires_at, priority, limits, budgets, created_at)"
    f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_KEY}"
)
# A key id is unique within its tenant only.
_KEY_NAMED = "tenant_id = $1 AND id = $2"
_AUDIT = "INSERT INTO audit_log (actor, action, tenant_id, target, old_value, new_value) VALUES ($1, $2, $3, $4, $5, $6)"
_LIST_AUDIT = (
    "SELECT id, at, actor, action, tenant_id AS tenant, target, old_value AS old, new_value AS new FROM audit_log"
    " WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY id DESC LIMIT $2"
)
_MIGRATE_TIMEOUT_S = 30.0
_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=lambda v: msgspec.json.encode(v).decode(), decoder=msgspec.json.decode)


class PostgresTenantStore:
    def __init__(
        self,
        dsn: str,
        pepper: bytes = b"",
        *,
        cache_ttl_s: float = 60.0,
        stale_ttl_s: float = 300.0,
        timeout_s: float = 2.0,
        pool_size: int = 4,
        bus: RevocationBus | None = None,
        listen: bool = True,
        auto_migrate: bool = True,
    ) -> None:
        self._dsn = dsn
        self._pepper = pepper
        self._timeout_s = timeout_s
        self._pool_size = pool_size
        self._bus = bus
        self._listen = listen
        self._migrated = not auto_migrate
        self._migrate_lock = asyncio.Lock()
        self._pool: asyncpg.Pool | None = None
        self.cache = KeyCache(cache_ttl_s, stale_ttl_s)

    async def start(self) -> None:
        # A replica starts even while PostgreSQL is down, and then fails closed.
        t = self._timeout_s
        self._pool = pool = await asyncpg.create_pool(
            self._dsn, min_size=0, max_size=self._pool_size, timeout=t, command_timeout=t, init=_init_connection
        )
        if self._bus is not None and self._listen:
            self._bus.listen(self.cache)
        if not self._migrated:
            await self._migrate_at_start(pool)

    async def _migrate_at_start(self, pool: asyncpg.Pool) -> None:
        # Schema changes may wait on another replica's lock: more time than a query gets.
        try:
            async with asyncio.timeout(_MIGRATE_TIMEOUT_S), pool.acquire() as conn:
                await self._migrate(conn)
        except _UNAVAILABLE as exc:
            log.warning("tenant store schema not checked at start (%s); retrying on first use", type(exc).__name__)

    async def close(self) -> None:
        if self._bus is not None:
            await self._bus.close()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), self._timeout_s)
            except (TimeoutError, *_UNAVAILABLE):
                self._pool.terminate()
            self._pool = None

    async def _run(self, tenant: str | None, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """One bounded transaction that sees ``tenant``'s rows only (None: every tenant's).

        Store trouble becomes StoreUnavailable.
        """
        if self._pool is None:
            raise StoreUnavailable("The tenant store is not started.")
        try:
            async with asyncio.timeout(self._timeout_s), self._pool.acquire() as conn:
                if not self._migrated:
                    await self._migrate(conn)
                async with conn.transaction():
                    await scope(conn, tenant)
                    return await op(conn)
        except _UNAVAILABLE as exc:
            if isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, asyncpg.PostgresConnectionError):
                log.warning("tenant store query failed: %s", type(exc).__name__)
            raise StoreUnavailable("The tenant store is unavailable; try again shortly.", retry_after=1) from None

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with self._migrate_lock:
            if not self._migrated:
                await apply_migrations(conn, [TENANCY])
                self._migrated = True

    # --- authentication ----------------------------------------------------

    async def authenticate(self, key_hash: str) -> Principal | None:
        return await self.cache.authenticate(key_hash, self._load)

    async def _load(self, key_hash: str) -> tuple[Principal, float | None] | None:
        # Whose key it is, is what the lookup finds out: it reads every tenant's.
        row = await self._run(None, lambda conn: conn.fetchrow(_KEY_BY_HASH, key_hash))
        if row is None:
            return None
        tenant, key = _tenant_and_key(row)
        if not usable(tenant, key, utcnow()):
            return None
        expires = key.expires_at.timestamp() if key.expires_at is not None else None
        return principal_of(tenant, key, key_hash), expires

    # --- tenants -------------------------------------------------------------

    async def list_tenants(self) -> list[Tenant]:
        rows = await self._run(None, lambda conn: conn.fetch(f"SELECT {_TENANT} FROM tenants ORDER BY id"))
        return [_convert(r, Tenant) for r in rows]

    async def get_tenant(self, tenant_id: str) -> Tenant:
        return await self._run(tenant_id, lambda conn: _tenant(conn, tenant_id))

    async def create_tenant(self, spec: TenantCreate, actor: str) -> Tenant:
        tenant = new_tenant(spec, utcnow())

        async def op(conn: asyncpg.Connection) -> Tenant:
            try:
                await conn.execute(f"INSERT INTO tenants ({_TENANT}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", *_tenant_values(tenant))
            except asyncpg.UniqueViolationError:
                raise AlreadyExists(f"Tenant {tenant.id!r} already exists.") from None
            await conn.execute(_AUDIT, actor, "tenant.create", tenant.id, f"tenant/{tenant.id}", None, snapshot(tenant))
            return tenant

        return await self._run(tenant.id, op)

    async def update_tenant(self, tenant_id: str, patch: TenantUpdate, actor: str) -> Tenant:
        return await self._change_tenant(tenant_id, patch, actor, "tenant.update")

    async def disable_tenant(self, tenant_id: str, actor: str) -> Tenant:
        return await self._change_tenant(tenant_id, TenantUpdate(disabled=True), actor, "tenant.disable")

    async def _change_tenant(self, tenant_id: str, patch: TenantUpdate, actor: str, action: str) -> Tenant:
        async def op(conn: asyncpg.Connection) -> Tenant:
            old = await _tenant(conn, tenant_id, lock=True)
            new = patched(old, patch, utcnow())
            # (id, name, disabled, priority, weight, limits, budgets) then updated_at
            row = await conn.fetchrow(_UPDATE_TENANT, *_tenant_values(new)[:7], new.updated_at)
            await conn.execute(_AUDIT, actor, action, tenant_id, f"tenant/{tenant_id}", snapshot(old), snapshot(new))
            return _convert(row, Tenant)

        tenant = await self._run(tenant_id, op)
        self.cache.evict_tenant(tenant_id)
        if self._bus is not None:
            await self._bus.tenant_changed(tenant_id)
        return tenant

    # --- keys ----------------------------------------------------------------

    async def create_key(self, tenant_id: str, spec: KeyCreate, actor: str) -> CreatedKey:
        plaintext, key_hash, record = new_key(tenant_id, spec, self._pepper, utcnow())
        values = msgspec.to_builtins(record)

        async def op(conn: asyncpg.Connection) -> ApiKey:
            await _tenant(conn, tenant_id, lock=True)
            try:
                r = record
                args = (r.id, tenant_id, key_hash, r.scopes, r.expires_at, r.priority, values["limits"], values["budgets"])
                row = await conn.fetchrow(_INSERT_KEY, *args, r.created_at)
            except asyncpg.UniqueViolationError:
                # Only this tenant's own ids collide: the key is (tenant_id, id).
                raise AlreadyExists(f"Key {record.id!r} already exists.") from None
            stored = _convert(row, ApiKey)
            await conn.execute(_AUDIT, actor, "key.create", tenant_id, f"key/{record.id}", None, snapshot(stored))
            return stored

        return CreatedKey(key=plaintext, record=await self._run(tenant_id, op))

    async def list_keys(self, tenant_id: str) -> list[ApiKey]:
        async def op(conn: asyncpg.Connection) -> list[ApiKey]:
            await _tenant(conn, tenant_id)
            rows = await conn.fetch(f"SELECT {_KEY} FROM api_keys WHERE tenant_id = $1 ORDER BY id", tenant_id)
            return [_convert(r, ApiKey) for r in rows]

        return await self._run(tenant_id, op)

    async def revoke_key(self, tenant_id: str, key_id: str, actor: str) -> ApiKey:
        async def op(conn: asyncpg.Connection) -> tuple[ApiKey, str]:
            await _tenant(conn, tenant_id)
            row = await conn.fetchrow(f"SELECT {_KEY}, hash FROM api_keys WHERE {_KEY_NAMED} FOR UPDATE", tenant_id, key_id)
            if row is None:
                raise KeyNotFound(f"No key {key_id!r} for tenant {tenant_id!r}.")
            old = _convert(row, ApiKey)
            if old.revoked:
                return old, row["hash"]
            revoke = f"UPDATE api_keys SET revoked_at = now() WHERE {_KEY_NAMED} RETURNING {_KEY}"
            new_row = await conn.fetchrow(revoke, tenant_id, key_id)
            new = _convert(new_row, ApiKey)
            await conn.execute(_AUDIT, actor, "key.revoke", tenant_id, f"key/{key_id}", snapshot(old), snapshot(new))
            return new, row["hash"]

        record, key_hash = await self._run(tenant_id, op)
        self.cache.evict_key(key_hash)
        if self._bus is not None:
            await self._bus.key_revoked(key_hash)
        return record

    # --- audit ---------------------------------------------------------------

    async def list_audit(self, tenant: str | None = None, limit: int = 100) -> list[AuditEntry]:
        rows = await self._run(tenant, lambda conn: conn.fetch(_LIST_AUDIT, tenant, limit))
        return [_convert(r, AuditEntry) for r in rows]

    async def record_event(self, actor: str, action: str, tenant: str | None, target: str, new: dict[str, Any]) -> None:
        await self._run(tenant, lambda conn: conn.execute(_AUDIT, actor, action, tenant, target, None, new))


async def _tenant(conn: asyncpg.Connection, tenant_id: str, *, lock: bool = False) -> Tenant:
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(f"SELECT {_TENANT} FROM tenants WHERE id = $1{suffix}", tenant_id)
    if row is None:
        raise TenantNotFound.named(tenant_id)
    return _convert(row, Tenant)


def _tenant_values(tenant: Tenant) -> tuple[Any, ...]:
    raw = msgspec.to_builtins(tenant)
    t = tenant
    return t.id, t.name, t.disabled, t.priority, t.weight, raw["limits"], raw["budgets"], t.created_at, t.updated_at


def _convert(row: asyncpg.Record, kind: type[T]) -> T:
    return msgspec.convert(dict(row), kind)


def _tenant_and_key(row: asyncpg.Record) -> tuple[Tenant, ApiKey]:
    fields = dict(row)
    tenant = fields.pop("t")
    del fields["hash"]
    return msgspec.convert(tenant, Tenant), msgspec.convert(fields, ApiKey)
