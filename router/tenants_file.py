"""The embedded tenant store: tenants and keys from the config file, held in memory.

Changes made through the admin API apply to this process only and are lost at
restart (edit the config file to keep them), but a reload of the file keeps them
(``FileTenantStore.reload``); the audit log is kept in memory,
bounded to the latest ``audit_capacity`` entries. For shared, persistent tenants
select the PostgreSQL store (``state.tenants: postgres``).
"""

from __future__ import annotations

import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import msgspec

from core.config import KeyConfig, TenantConfig
from core.principal import Principal
from router.tenant_records import (
    AlreadyExists,
    ApiKey,
    AuditEntry,
    CreatedKey,
    KeyCreate,
    KeyNotFound,
    Tenant,
    TenantCreate,
    TenantNotFound,
    TenantUpdate,
    as_utc,
    new_key,
    new_tenant,
    patched,
    principal_of,
    snapshot,
    utcnow,
)

Snapshot = dict[str, Any]
KeyName = tuple[str, str]  # (tenant id, key id): key ids are unique within a tenant only
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The fields of a tenant entry this store holds; the rest (routing, PII, guardrails, ...) the snapshot reads.
_TENANT_FIELDS = ("name", "disabled", "priority", "weight", "limits", "budgets")


class FileTenantStore:
    def __init__(self, tenants: list[TenantConfig], pepper: bytes = b"", *, audit_capacity: int = 10_000) -> None:
        self._pepper = pepper
        self._tenants: dict[str, Tenant] = {}
        self._keys: dict[KeyName, ApiKey] = {}
        self._hashes: dict[KeyName, str] = {}  # -> keyed hash
        # The hot path: keyed hash -> (principal, wall-clock expiry); only usable keys.
        self._usable: dict[str, tuple[Principal, float | None]] = {}
        self._audit: deque[AuditEntry] = deque(maxlen=audit_capacity)
        self._audit_ids = 0
        # The entry each tenant the config defines was last loaded from: a reload compares against it.
        self._entries: dict[str, TenantConfig] = {t.id: t for t in tenants}
        # Tenants created through the admin API: no reload removes them.
        self._created: set[str] = set()
        for tenant in tenants:
            self._load(tenant)
        for tenant_id in self._tenants:
            self._reindex(tenant_id)

    def _load(self, config: TenantConfig) -> None:
        # Config records carry no timestamps; the epoch marks them as predating the process.
        self._tenants[config.id] = Tenant(
            id=config.id,
            name=config.name,
            disabled=config.disabled,
            priority=config.priority,
            weight=config.weight,
            limits=config.limits,
            budgets=list(config.budgets),
            created_at=_EPOCH,
            updated_at=_EPOCH,
        )
        for key in config.keys:
            self._keys[config.id, key.id] = _key_from_config(config.id, key)
            self._hashes[config.id, key.id] = key.hash

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def authenticate(self, key_hash: str) -> Principal | None:
        found = self._usable.get(key_hash)
        if found is None:
            return None
        principal, expires_at = found
        if expires_at is not None and expires_at <= time.time():
            return None
        return principal

    async def list_tenants(self) -> list[Tenant]:
        return sorted(self._tenants.values(), key=lambda t: t.id)

    async def get_tenant(self, tenant_id: str) -> Tenant:
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            raise TenantNotFound.named(tenant_id)
        return tenant

    async def create_tenant(self, spec: TenantCreate, actor: str) -> Tenant:
        if spec.id in self._tenants:
            raise AlreadyExists(f"Tenant {spec.id!r} already exists.")
        tenant = new_tenant(spec, utcnow())
        self._tenants[tenant.id] = tenant
        self._created.add(tenant.id)
        self._record(actor, "tenant.create", tenant.id, f"tenant/{tenant.id}", None, snapshot(tenant))
        return tenant

    async def update_tenant(self, tenant_id: str, patch: TenantUpdate, actor: str) -> Tenant:
        old = await self.get_tenant(tenant_id)
        new = patched(old, patch, utcnow())
        self._tenants[tenant_id] = new
        self._reindex(tenant_id)
        self._record(actor, "tenant.update", tenant_id, f"tenant/{tenant_id}", snapshot(old), snapshot(new))
        return new

    async def disable_tenant(self, tenant_id: str, actor: str) -> Tenant:
        old = await self.get_tenant(tenant_id)
        new = msgspec.structs.replace(old, disabled=True, updated_at=utcnow())
        self._tenants[tenant_id] = new
        self._reindex(tenant_id)
        self._record(actor, "tenant.disable", tenant_id, f"tenant/{tenant_id}", snapshot(old), snapshot(new))
        return new

    async def create_key(self, tenant_id: str, spec: KeyCreate, actor: str) -> CreatedKey:
        await self.get_tenant(tenant_id)
        plaintext, key_hash, record = new_key(tenant_id, spec, self._pepper, utcnow())
        name = (tenant_id, record.id)
        if name in self._keys:
            raise AlreadyExists(f"Key {record.id!r} already exists.")
        self._keys[name] = record
        self._hashes[name] = key_hash
        self._reindex(tenant_id)
        self._record(actor, "key.create", tenant_id, f"key/{record.id}", None, snapshot(record))
        return CreatedKey(key=plaintext, record=record)

    async def list_keys(self, tenant_id: str) -> list[ApiKey]:
        await self.get_tenant(tenant_id)
        return sorted((k for k in self._keys.values() if k.tenant == tenant_id), key=lambda k: k.id)

    async def revoke_key(self, tenant_id: str, key_id: str, actor: str) -> ApiKey:
        await self.get_tenant(tenant_id)
        old = self._keys.get((tenant_id, key_id))
        if old is None:
            raise KeyNotFound(f"No key {key_id!r} for tenant {tenant_id!r}.")
        if old.revoked:
            return old
        new = msgspec.structs.replace(old, revoked=True, revoked_at=utcnow())
        self._keys[tenant_id, key_id] = new
        self._reindex(tenant_id)
        self._record(actor, "key.revoke", tenant_id, f"key/{key_id}", snapshot(old), snapshot(new))
        return new

    async def list_audit(self, tenant: str | None = None, limit: int = 100) -> list[AuditEntry]:
        out: list[AuditEntry] = []
        for entry in reversed(self._audit):
            if tenant is None or entry.tenant == tenant:
                out.append(entry)
                if len(out) >= limit:
                    break
        return out

    async def record_event(self, actor: str, action: str, tenant: str | None, target: str, new: dict[str, Any]) -> None:
        self._record(actor, action, tenant, target, None, new)

    def reload(self, tenants: list[TenantConfig]) -> None:
        """A new config version's tenants, in one step; nothing accepted through the admin API is lost.

        The file owns what it says: a field of a tenant entry (name, priority,
        weight, limits, budgets, disabled) or a key entry that changed since the
        previous version is taken from the file; one that did not change keeps
        what the admin API set since (a tenant disabled, renamed or given other
        limits stays so across a reload that did not touch it). A tenant the file
        dropped goes with its keys, unless the admin API created it: then only
        the keys the file gave it go. Tenants and keys created through the admin
        API stay, and a key revoked through it stays revoked whatever the file
        says. Nothing here awaits, so no request sees half of the change.
        """
        # Revoked through the admin API (a key the file disables has no revocation time): whatever the file says.
        revoked = {name: key.revoked_at for name, key in self._keys.items() if key.revoked_at is not None}
        wanted = {t.id: t for t in tenants}
        for tenant_id in [t for t in self._entries if t not in wanted]:
            dropped = self._entries.pop(tenant_id)
            if tenant_id in self._created:
                self._drop_keys(tenant_id, {k.id for k in dropped.keys})
            else:
                self._tenants.pop(tenant_id, None)
                self._drop_keys(tenant_id, None)
        for entry in tenants:
            self._follow(entry, self._entries.get(entry.id))
            self._entries[entry.id] = entry
        for name in revoked.keys() & self._keys.keys():
            self._keys[name] = msgspec.structs.replace(self._keys[name], revoked=True, revoked_at=revoked[name])
        self._usable.clear()
        for tenant_id in self._tenants:
            self._reindex(tenant_id)

    def _follow(self, entry: TenantConfig, previous: TenantConfig | None) -> None:
        """Apply what the file changed in ``entry`` since ``previous`` (None: the file did not hold it)."""
        current = self._tenants.get(entry.id)
        if previous is None or current is None:
            # New to the file: a tenant the admin API created is now the file's, its API keys kept.
            created_at = current.created_at if current is not None else _EPOCH
            self._drop_keys(entry.id, {k.id for k in previous.keys} if previous is not None else set())
            self._load(entry)
            self._tenants[entry.id] = msgspec.structs.replace(self._tenants[entry.id], created_at=created_at)
            return
        changed = {f: getattr(entry, f) for f in _TENANT_FIELDS if getattr(entry, f) != getattr(previous, f)}
        if changed:
            if "budgets" in changed:
                changed["budgets"] = list(changed["budgets"])
            self._tenants[entry.id] = msgspec.structs.replace(current, **changed, updated_at=utcnow())
        old_keys = {k.id: k for k in previous.keys}
        new_ids = {k.id for k in entry.keys}
        self._drop_keys(entry.id, {key_id for key_id in old_keys if key_id not in new_ids})
        for key in entry.keys:
            if old_keys.get(key.id) != key or (entry.id, key.id) not in self._keys:
                self._keys[entry.id, key.id] = _key_from_config(entry.id, key)
                self._hashes[entry.id, key.id] = key.hash

    def _drop_keys(self, tenant_id: str, key_ids: set[str] | None) -> None:
        """The tenant's keys the file defined among ``key_ids`` (None: all its keys, the admin API's too)."""
        for name in [n for n in self._keys if n[0] == tenant_id]:
            if key_ids is None or (name[1] in key_ids and self._keys[name].created_at == _EPOCH):
                del self._keys[name]
                del self._hashes[name]

    def record_config(self, actor: str, version: int, hash: str, reason: str) -> None:
        """A config version in the audit log (embedded mode; PostgreSQL's store writes its own)."""
        self._record(actor, "config.commit", None, f"config:v{version}", None, {"version": version, "hash": hash, "reason": reason})

    def _reindex(self, tenant_id: str) -> None:
        """Rebuild the hot-path entries of one tenant's keys after any change."""
        tenant = self._tenants[tenant_id]
        for key in self._keys.values():
            if key.tenant != tenant_id:
                continue
            key_hash = self._hashes[tenant_id, key.id]
            if key.revoked or tenant.disabled:
                self._usable.pop(key_hash, None)
                continue
            # Expiry is checked per request: a key may expire while indexed.
            expires = key.expires_at.timestamp() if key.expires_at is not None else None
            self._usable[key_hash] = (principal_of(tenant, key, key_hash), expires)

    def _record(self, actor: str, action: str, tenant: str | None, target: str, old: Snapshot | None, new: Snapshot | None) -> None:
        self._audit_ids += 1
        entry = AuditEntry(id=self._audit_ids, at=utcnow(), actor=actor, action=action, tenant=tenant, target=target, old=old, new=new)
        self._audit.append(entry)


def _key_from_config(tenant_id: str, key: KeyConfig) -> ApiKey:
    return ApiKey(
        id=key.id,
        tenant=tenant_id,
        scopes=sorted(set(key.scopes)),
        expires_at=as_utc(key.expires_at) if key.expires_at is not None else None,
        revoked=key.disabled,
        priority=key.priority,
        limits=key.limits,
        budgets=list(key.budgets),
        created_at=_EPOCH,
    )
