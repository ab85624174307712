"""The config file's tenant store across reloads: what the file owns follows it, nothing the admin API accepted is lost.

Before: a tenant created through the admin API and later added to the file
(to give it a policy) was removed, keys and all, by a version that left it
out again (a rollback, an edit); and every reload, whatever it changed, put
the file's values back over the admin API's changes to a file tenant, so a
tenant disabled in the console came back at the next canary step.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from core.config import LimitsConfig, TenantConfig
from router.auth import hash_api_key
from router.tenant_records import KeyCreate, TenantCreate, TenantUpdate
from router.tenants_file import FileTenantStore

FILE_KEY = "sk-reload-file-key-0123456789"


def entry(tenant_id: str, **fields: Any) -> TenantConfig:
    keys = fields.pop("keys", [{"id": f"{tenant_id}-file", "hash": hash_api_key(FILE_KEY + tenant_id)}])
    return msgspec.convert({"id": tenant_id, "keys": keys, **fields}, TenantConfig)


async def test_a_tenant_created_through_the_admin_api_keeps_itself_and_its_keys_across_reloads() -> None:
    store = FileTenantStore([entry("file-tenant")])
    await store.create_tenant(TenantCreate(id="acme", name="Acme", limits=LimitsConfig(rpm=7)), "ops/k")
    created = await store.create_key("acme", KeyCreate(id="acme-api", scopes=["tenant:read"]), "ops/k")
    store.reload([entry("file-tenant", name="renamed in the file")])
    assert (await store.get_tenant("acme")).name == "Acme"
    assert [k.id for k in await store.list_keys("acme")] == ["acme-api"]
    assert (await store.authenticate(hash_api_key(created.key))) is not None

    # The file takes the tenant over (to give it a policy, say), then a later version leaves it out again.
    store.reload([entry("file-tenant"), entry("acme", name="Acme (file)", pii={"action": "redact"})])
    assert (await store.get_tenant("acme")).name == "Acme (file)"
    assert {k.id for k in await store.list_keys("acme")} == {"acme-api", "acme-file"}
    store.reload([entry("file-tenant")])
    tenant = await store.get_tenant("acme")
    assert tenant.id == "acme" and tenant.created_at.year > 1970
    assert [k.id for k in await store.list_keys("acme")] == ["acme-api"]  # the file's key went with the file's entry
    assert await store.authenticate(hash_api_key(created.key)) is not None
    assert await store.authenticate(hash_api_key(FILE_KEY + "acme")) is None


async def test_admin_api_changes_to_a_file_tenant_stay_until_the_file_changes_that_field() -> None:
    store = FileTenantStore([entry("globex", name="Globex", limits={"rpm": 10}), entry("initech")])
    await store.update_tenant("globex", TenantUpdate(name="Globex Corp", limits=LimitsConfig(rpm=99)), "ops/k")
    await store.disable_tenant("globex", "ops/k")
    # A version that changes another tenant, or only this tenant's policy: the admin API's values stay.
    store.reload([entry("globex", name="Globex", limits={"rpm": 10}, pii={"action": "block"}), entry("initech", weight=3)])
    tenant = await store.get_tenant("globex")
    assert (tenant.name, tenant.limits.rpm, tenant.disabled) == ("Globex Corp", 99, True)
    assert await store.authenticate(hash_api_key(FILE_KEY + "globex")) is None  # still disabled
    assert (await store.get_tenant("initech")).weight == 3
    # The file changes the limits: the file's value, the rest as the admin API left it.
    store.reload([entry("globex", name="Globex", limits={"rpm": 20}), entry("initech", weight=3)])
    tenant = await store.get_tenant("globex")
    assert (tenant.name, tenant.limits.rpm, tenant.disabled) == ("Globex Corp", 20, True)


async def test_keys_follow_the_file_but_a_revocation_through_the_admin_api_stays() -> None:
    file_keys = [{"id": "one", "hash": hash_api_key("sk-one")}, {"id": "two", "hash": hash_api_key("sk-two")}]
    store = FileTenantStore([entry("t", keys=file_keys)])
    await store.revoke_key("t", "one", "ops/k")
    changed = [
        {"id": "one", "hash": hash_api_key("sk-one"), "scopes": ["tenant:read"]},
        {"id": "two", "hash": hash_api_key("sk-two"), "disabled": True},
    ]
    store.reload([entry("t", keys=changed)])
    assert await store.authenticate(hash_api_key("sk-one")) is None  # revoked through the API, whatever the file says
    assert await store.authenticate(hash_api_key("sk-two")) is None  # disabled in the file
    store.reload([entry("t", keys=file_keys)])
    assert await store.authenticate(hash_api_key("sk-one")) is None
    assert await store.authenticate(hash_api_key("sk-two")) is not None  # enabled in the file again
    store.reload([entry("t", keys=file_keys[1:])])
    assert [k.id for k in await store.list_keys("t")] == ["two"]


async def test_a_tenant_the_file_defined_goes_with_the_file_keys_and_all() -> None:
    store = FileTenantStore([entry("gone"), entry("kept")])
    extra = await store.create_key("gone", KeyCreate(id="api-key"), "ops/k")
    store.reload([entry("kept")])
    assert [t.id for t in await store.list_tenants()] == ["kept"]
    assert await store.authenticate(hash_api_key(extra.key)) is None


async def test_a_reload_is_quick_for_many_tenants() -> None:
    tenants = [entry(f"t{i}") for i in range(2000)]
    store = FileTenantStore(tenants)
    started = time.perf_counter()
    store.reload([*tenants[1:], entry("t0", weight=2)])
    assert time.perf_counter() - started < 5
    assert (await store.get_tenant("t0")).weight == 2
