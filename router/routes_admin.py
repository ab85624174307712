"""The admin API under /admin/v1: tenants, their keys and the audit log.

Who may do what:
- a key with an ``ops:`` scope granting ``ops:admin`` (``ops:*`` or ``ops:admin``):
  everything, for every tenant;
- ``tenant:read``: read its own tenant, its keys and its audit entries;
- ``tenant:write``: that, plus create and revoke its own tenant's keys and
  rename its tenant (not limits, priority, weight, budgets or disabling);
- any other key: 403.
Another tenant's resources answer 404 exactly as missing ones do. A key that a
tenant's own key creates is bounded by it (``router.key_bounds``): never more
scopes, priority, limits, budgets or lifetime than its maker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Request, Response, delete, get, patch, post

from core.errors import InvalidRequest, NotFound, PermissionDenied
from core.principal import Principal
from router.body import read_body
from router.decode import decode_object
from router.gateway import Gateway
from router.key_bounds import bounded_by
from router.openapi import BODY
from router.tenant_records import (
    OPS_SCOPE,
    READ_SCOPE,
    WRITE_SCOPE,
    ApiKey,
    AuditEntry,
    CreatedKey,
    KeyCreate,
    Tenant,
    TenantCreate,
    TenantNotFound,
    TenantStore,
    TenantUpdate,
    actor_of,
)

MAX_AUDIT_LIMIT = 1000
JSON = "application/json"
PREFIX = "/admin/v1"
T = TypeVar("T")


@dataclass(slots=True, frozen=True)
class Caller:
    principal: Principal
    ops: bool

    @property
    def actor(self) -> str:
        return actor_of(self.principal)

    def may_write(self) -> bool:
        return self.ops or self.principal.has_scope(WRITE_SCOPE)

    def reach(self, tenant_id: str, *, write: bool = False) -> None:
        """Refuse a tenant the caller may not touch: 404 for others', 403 for a missing scope."""
        if self.ops:
            return
        if tenant_id != self.principal.tenant:
            raise TenantNotFound.named(tenant_id)
        if write and not self.may_write():
            raise PermissionDenied("This key may not change its tenant: it needs the `tenant:write` scope.")

    def require_ops(self) -> None:
        if not self.ops:
            raise PermissionDenied(f"This operation needs the `{OPS_SCOPE}` scope.")


def caller_for(principal: Principal) -> Caller:
    """The admin API's view of a principal; 403 for one with no admin scope."""
    ops = principal.has_scope(OPS_SCOPE)
    if not (ops or principal.has_scope(READ_SCOPE) or principal.has_scope(WRITE_SCOPE)):
        raise PermissionDenied("This key may not use the admin API.")
    return Caller(principal, ops)


async def caller_of(request: Request[Any, Any, Any]) -> tuple[Caller, TenantStore]:
    gateway: Gateway = request.app.state.gateway
    principal = await gateway.authenticate(request.headers.get("authorization"))
    return caller_for(principal), gateway.tenants


# --- the operations, shared by the routes below and the console (router.ui) ------------


async def visible_tenants(caller: Caller, store: TenantStore) -> list[Tenant]:
    if caller.ops:
        return await store.list_tenants()
    return [await store.get_tenant(caller.principal.tenant)]


async def add_tenant(caller: Caller, store: TenantStore, spec: TenantCreate) -> Tenant:
    caller.require_ops()
    return await store.create_tenant(spec, caller.actor)


async def read_tenant(caller: Caller, store: TenantStore, tenant_id: str) -> Tenant:
    caller.reach(tenant_id)
    return await store.get_tenant(tenant_id)


async def change_tenant(caller: Caller, store: TenantStore, tenant_id: str, update: TenantUpdate) -> Tenant:
    caller.reach(tenant_id, write=True)
    forbidden = sorted(update.fields_set() - {"name"})
    if forbidden and not caller.ops:
        raise PermissionDenied(f"Only operators may change {', '.join(forbidden)}.", param=forbidden[0])
    return await store.update_tenant(tenant_id, update, caller.actor)


async def stop_tenant(caller: Caller, store: TenantStore, tenant_id: str) -> Tenant:
    caller.reach(tenant_id)
    caller.require_ops()
    return await store.disable_tenant(tenant_id, caller.actor)


async def tenant_keys(caller: Caller, store: TenantStore, tenant_id: str) -> list[ApiKey]:
    caller.reach(tenant_id)
    return await store.list_keys(tenant_id)


async def mint_key(caller: Caller, store: TenantStore, tenant_id: str, spec: KeyCreate) -> CreatedKey:
    """A new key; its plaintext is in the answer and nowhere else."""
    caller.reach(tenant_id, write=True)
    if not caller.ops:
        spec = bounded_by(caller.principal, spec)
    return await store.create_key(tenant_id, spec, caller.actor)


async def drop_key(caller: Caller, store: TenantStore, tenant_id: str, key_id: str) -> ApiKey:
    caller.reach(tenant_id, write=True)
    return await store.revoke_key(tenant_id, key_id, caller.actor)


async def audit_entries(caller: Caller, store: TenantStore, tenant: str | None, limit: int) -> list[AuditEntry]:
    """Newest first; a tenant's own entries only, unless the caller is an operator."""
    if not caller.ops:
        if tenant is not None:
            caller.reach(tenant)
        tenant = caller.principal.tenant
    return await store.list_audit(tenant, limit)


async def _decode(request: Request[Any, Any, Any], kind: type[T]) -> T:
    gateway: Gateway = request.app.state.gateway
    # The same bounded read and depth-checked decode as the OpenAI routes.
    raw = decode_object(await read_body(request, gateway.config.server.max_body_bytes))
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid request body: {exc}.") from None


def _json(value: object, status: int = 200) -> Response[bytes]:
    return Response(msgspec.json.encode(value), media_type=JSON, status_code=status)


def _listing(items: list[Any]) -> Response[bytes]:
    return _json({"object": "list", "data": items})


@get(f"{PREFIX}/tenants")
async def list_tenants(request: Request[Any, Any, Any]) -> Response[bytes]:
    caller, store = await caller_of(request)
    return _listing(await visible_tenants(caller, store))


@post(f"{PREFIX}/tenants", status_code=201, opt={BODY: TenantCreate})
async def create_tenant(request: Request[Any, Any, Any]) -> Response[bytes]:
    caller, store = await caller_of(request)
    caller.require_ops()
    spec = await _decode(request, TenantCreate)
    return _json(await add_tenant(caller, store, spec), 201)


@get(f"{PREFIX}/tenants/{{tenant_id:str}}")
async def get_tenant(request: Request[Any, Any, Any], tenant_id: str) -> Response[bytes]:
    caller, store = await caller_of(request)
    return _json(await read_tenant(caller, store, tenant_id))


@patch(f"{PREFIX}/tenants/{{tenant_id:str}}", opt={BODY: TenantUpdate})
async def update_tenant(request: Request[Any, Any, Any], tenant_id: str) -> Response[bytes]:
    caller, store = await caller_of(request)
    caller.reach(tenant_id, write=True)
    update = await _decode(request, TenantUpdate)
    return _json(await change_tenant(caller, store, tenant_id, update))


@post(f"{PREFIX}/tenants/{{tenant_id:str}}/disable", status_code=200)
async def disable_tenant(request: Request[Any, Any, Any], tenant_id: str) -> Response[bytes]:
    caller, store = await caller_of(request)
    return _json(await stop_tenant(caller, store, tenant_id))


@get(f"{PREFIX}/tenants/{{tenant_id:str}}/keys")
async def list_keys(request: Request[Any, Any, Any], tenant_id: str) -> Response[bytes]:
    caller, store = await caller_of(request)
    return _listing(await tenant_keys(caller, store, tenant_id))


@post(f"{PREFIX}/tenants/{{tenant_id:str}}/keys", status_code=201, opt={BODY: KeyCreate})
async def create_key(request: Request[Any, Any, Any], tenant_id: str) -> Response[bytes]:
    caller, store = await caller_of(request)
    caller.reach(tenant_id, write=True)
    spec = await _decode(request, KeyCreate)
    created = await mint_key(caller, store, tenant_id, spec)
    # The plaintext appears in this one response and nowhere else.
    body = {"key": created.key, **msgspec.to_builtins(created.record)}
    return _json(body, 201)


@delete(f"{PREFIX}/tenants/{{tenant_id:str}}/keys/{{key_id:str}}", status_code=200)
async def revoke_key(request: Request[Any, Any, Any], tenant_id: str, key_id: str) -> Response[bytes]:
    caller, store = await caller_of(request)
    return _json(await drop_key(caller, store, tenant_id, key_id))


@get(f"{PREFIX}/audit")
async def list_audit(request: Request[Any, Any, Any]) -> Response[bytes]:
    caller, store = await caller_of(request)
    tenant = request.query_params.get("tenant")
    return _listing(await audit_entries(caller, store, tenant, _limit(request.query_params.get("limit"))))


class TokenRevocation(msgspec.Struct, forbid_unknown_fields=True):
    jti: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    # The token's `exp`: the denylist entry lives until then (plus leeway).
    exp: int


@post(f"{PREFIX}/tokens/revoke", status_code=200, opt={BODY: TokenRevocation})
async def revoke_token(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Refuse a JWT by its `jti` on every replica at once (shared through Redis)."""
    caller, _ = await caller_of(request)
    caller.require_ops()
    gateway: Gateway = request.app.state.gateway
    if gateway.jwt is None:
        raise NotFound("JWT authentication is not configured (auth.jwt).")
    spec = await _decode(request, TokenRevocation)
    await gateway.jwt.revoke(spec.jti, spec.exp)
    return _json({"revoked": True, "jti": spec.jti})


def _limit(raw: str | None) -> int:
    if raw is None:
        return 100
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_AUDIT_LIMIT:
        raise InvalidRequest(f"`limit` must be an integer from 1 to {MAX_AUDIT_LIMIT}.", param="limit")
    return int(raw)


ROUTES = [
    list_tenants,
    create_tenant,
    get_tenant,
    update_tenant,
    disable_tenant,
    list_keys,
    create_key,
    revoke_key,
    list_audit,
    revoke_token,
]
