"""A key minted through the admin API by a tenant's own key is no more powerful than its maker.

Tenant T (priority high, rpm 100, tpm 10000, a hard monthly money budget) holds
``parent``: `tenant:write`, priority standard, rpm 2 and 2 concurrent, a hard
daily token budget, an expiry a day away; and ``slim``: `tenant:write` with rpm
2 and nothing else. Whatever a child leaves out it inherits from its maker;
whatever it asks beyond its maker is refused with a 403 naming the field. An
operator's key is not bound. Both tenant stores.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import msgspec
import pytest

from bench.fake_upstream import FakeUpstream
from router.tenant_records import KeyCreate, TenantCreate
from tests.conftest import make_config
from tests.integration.gateway_server import running_gateway
from tests.integration.rls_scratch import tenant_state

EXPIRES = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=1)


@dataclass
class Env:
    base: str
    tenant: str
    keys: dict[str, str]  # name -> plaintext


async def _seed(store: Any) -> tuple[str, dict[str, str]]:
    suffix = secrets.token_hex(3)
    tenant, ops = f"t-{suffix}", f"ops-{suffix}"
    money = {"kind": "money", "period": "monthly", "limit": 5_000_000}
    spec = {"id": tenant, "priority": "high", "limits": {"rpm": 100, "tpm": 10_000}, "budgets": [money]}
    await store.create_tenant(msgspec.convert(spec, TenantCreate), "test")
    await store.create_tenant(TenantCreate(id=ops), "test")
    parent = {
        "scopes": ["tenant:read", "tenant:write"],
        "priority": "standard",
        "limits": {"rpm": 2, "max_concurrent": 2},
        "budgets": [{"kind": "tokens", "period": "daily", "limit": 1000}],
        "expires_at": EXPIRES.isoformat(),
    }
    grants = {
        "parent": (tenant, parent),
        "slim": (tenant, {"scopes": ["tenant:write"], "limits": {"rpm": 2}}),
        "ops": (ops, {"scopes": ["ops:*"]}),
    }
    keys = {}
    for name, (owner, key) in grants.items():
        keys[name] = (await store.create_key(owner, msgspec.convert(key, KeyCreate), "test")).key
    return tenant, keys


@pytest.fixture(scope="module", params=["config", "postgres"])
async def env(request: pytest.FixtureRequest, fake_upstream: FakeUpstream) -> AsyncIterator[Env]:
    overrides: dict[str, Any] = {"tenants": []}
    async with tenant_state(request.param, "sg_minting") as state:
        config = make_config(fake_upstream.url, **overrides, **state)
        async with running_gateway(config) as (base, gateway):
            tenant, keys = await _seed(gateway.tenants)
            yield Env(base, tenant, keys)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def mint(http: aiohttp.ClientSession, env: Env, maker: str, body: dict[str, Any]) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {env.keys[maker]}"}
    async with http.post(f"{env.base}/admin/v1/tenants/{env.tenant}/keys", json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def chat(http: aiohttp.ClientSession, env: Env, key: str) -> int:
    payload = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {key}"}
    async with http.post(f"{env.base}/v1/chat/completions", json=payload, headers=headers) as resp:
        await resp.read()
        return resp.status


def limits(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (record["limits"] or {}).items() if v is not None}


def at(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


BEYOND = [
    ({"scopes": ["tenant:read", "inference:admin"]}, "scopes"),
    ({"scopes": ["ops:*"]}, "scopes"),
    ({"priority": "high"}, "priority"),  # the tenant's priority, above the maker key's own
    ({"limits": {"rpm": 3}}, "limits.rpm"),
    ({"limits": {"tpm": 10_001}}, "limits.tpm"),  # the maker key sets none: the tenant's applies
    ({"limits": {"max_concurrent": 3}}, "limits.max_concurrent"),
    ({"budgets": [{"kind": "tokens", "period": "daily", "limit": 1001}]}, "budgets[0].limit"),
    ({"budgets": [{"kind": "money", "period": "monthly", "limit": 5_000_001}]}, "budgets[0].limit"),
    ({"expires_at": (EXPIRES + timedelta(hours=1)).isoformat()}, "expires_at"),
]


@pytest.mark.parametrize(("body", "param"), BEYOND, ids=[p for _, p in BEYOND])
async def test_a_key_may_not_mint_beyond_itself(env: Env, http: aiohttp.ClientSession, body: dict[str, Any], param: str) -> None:
    status, answer = await mint(http, env, "parent", body)
    assert status == 403, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert (answer["error"]["type"], answer["error"]["param"]) == ("permission_error", param)
    assert f"`{param}`" in answer["error"]["message"]


async def test_what_a_minted_key_leaves_out_it_inherits(env: Env, http: aiohttp.ClientSession) -> None:
    status, child = await mint(http, env, "parent", {})
    assert status == 201, child
    assert (child["scopes"], child["priority"], limits(child)) == ([], "standard", {"rpm": 2, "max_concurrent": 2})
    assert child["budgets"] == [{"kind": "tokens", "period": "daily", "limit": 1000, "hard": True, "alert_at": [80, 90, 100]}]
    assert at(child["expires_at"]) == EXPIRES

    status, partial = await mint(http, env, "parent", {"limits": {"rpm": 1}, "budgets": [], "priority": "low"})
    assert status == 201, partial
    assert (partial["priority"], limits(partial)) == ("low", {"rpm": 1, "max_concurrent": 2})
    assert len(partial["budgets"]) == 1 and at(partial["expires_at"]) == EXPIRES


async def test_within_its_makers_bounds_a_key_gets_what_it_asks(env: Env, http: aiohttp.ClientSession) -> None:
    earlier = EXPIRES - timedelta(hours=1)
    spec = {
        "scopes": ["tenant:read"],
        "priority": "standard",
        "limits": {"rpm": 2, "tpm": 10_000, "max_concurrent": 1},
        "budgets": [{"kind": "tokens", "period": "daily", "limit": 500, "hard": True, "alert_at": [50, 100]}],
        "expires_at": earlier.isoformat(),
    }
    status, child = await mint(http, env, "parent", spec)
    assert status == 201, child
    assert (child["scopes"], child["priority"], limits(child)) == (["tenant:read"], "standard", spec["limits"])
    assert (child["budgets"], at(child["expires_at"])) == (spec["budgets"], earlier)


async def test_an_inherited_limit_binds_the_minted_key(env: Env, http: aiohttp.ClientSession) -> None:
    status, child = await mint(http, env, "slim", {})
    assert status == 201 and limits(child) == {"rpm": 2} and child["expires_at"] is None
    assert [await chat(http, env, child["key"]) for _ in range(3)] == [200, 200, 429]


async def test_an_operators_key_is_not_bound(env: Env, http: aiohttp.ClientSession) -> None:
    status, child = await mint(http, env, "ops", {"priority": "critical", "limits": {"rpm": 1000}})
    assert status == 201, child
    assert (child["priority"], limits(child), child["budgets"], child["expires_at"]) == ("critical", {"rpm": 1000}, [], None)
