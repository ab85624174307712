"""The admin API over HTTP, against both tenant stores: who may read and change what.

Tenant A holds keys with `tenant:read`/`tenant:write`; tenant B is someone else;
`ops` holds `ops:*`. A's keys must not read or change B through any admin
endpoint, nor act as B on the OpenAI surface; the ops key may do everything.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest

from bench.fake_upstream import FakeUpstream
from router.gateway import Gateway
from router.tenant_records import KeyCreate, TenantCreate
from tests.conftest import make_config
from tests.integration.gateway_server import free_port, running_gateway
from tests.integration.rls_scratch import tenant_state

PEPPER_ENV = "SG_TEST_ADMIN_PEPPER"


@dataclass
class Env:
    base: str
    gateway: Gateway
    a: str  # tenant ids
    b: str
    keys: dict[str, str]  # name -> plaintext
    key_ids: dict[str, str]  # name -> key id


async def _seed(gateway: Gateway) -> tuple[str, str, dict[str, str], dict[str, str]]:
    store = gateway.tenants
    suffix = secrets.token_hex(3)
    ops, a, b = f"ops-{suffix}", f"a-{suffix}", f"b-{suffix}"
    for tenant in (ops, a, b):
        await store.create_tenant(TenantCreate(id=tenant, name=tenant.split("-")[0].upper()), "test")
    grants = {
        "ops": (ops, ["ops:*"]),
        "a_rw": (a, ["tenant:read", "tenant:write"]),
        "a_ro": (a, ["tenant:read"]),
        "a_none": (a, []),
        "b_rw": (b, ["tenant:read", "tenant:write"]),
    }
    keys, key_ids = {}, {}
    for name, (tenant, scopes) in grants.items():
        created = await store.create_key(tenant, KeyCreate(id=f"{name}-{suffix}", scopes=scopes), "test")
        keys[name], key_ids[name] = created.key, created.record.id
    return a, b, keys, key_ids


@pytest.fixture(scope="module", params=["config", "postgres"])
async def env(request: pytest.FixtureRequest, fake_upstream: FakeUpstream) -> AsyncIterator[Env]:
    os.environ[PEPPER_ENV] = "admin-api-pepper"
    overrides: dict[str, Any] = {"tenants": [], "auth": {"key_pepper": {"env": PEPPER_ENV}}}
    async with tenant_state(request.param, "sg_admin") as state:
        config = make_config(fake_upstream.url, **overrides, **state)
        async with running_gateway(config) as (base, gateway):
            a, b, keys, key_ids = await _seed(gateway)
            yield Env(base, gateway, a, b, keys, key_ids)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession, env: Env, key: str | None, method: str, path: str, body: Any = None, raw: bytes | None = None
) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {env.keys.get(key, key)}"} if key is not None else {}
    if raw is not None:
        headers["content-type"] = "application/json"
    payload: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
    async with http.request(method, f"{env.base}{path}", headers=headers, **payload) as resp:
        return resp.status, await resp.json(content_type=None)


def assert_error(status: int, body: Any, expected: int) -> None:
    assert status == expected, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}


async def chat(http: aiohttp.ClientSession, env: Env, key: str) -> int:
    payload = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    status, _ = await call(http, env, key, "POST", "/v1/chat/completions", payload)
    return status


def other_tenant_requests(env: Env) -> list[tuple[str, str, Any]]:
    b, b_key = env.b, env.key_ids["b_rw"]
    return [
        ("GET", f"/admin/v1/tenants/{b}", None),
        ("PATCH", f"/admin/v1/tenants/{b}", {"name": "taken over"}),
        ("POST", f"/admin/v1/tenants/{b}/disable", None),
        ("GET", f"/admin/v1/tenants/{b}/keys", None),
        ("POST", f"/admin/v1/tenants/{b}/keys", {"scopes": []}),
        ("DELETE", f"/admin/v1/tenants/{b}/keys/{b_key}", None),
        ("GET", f"/admin/v1/audit?tenant={b}", None),
    ]


@pytest.mark.parametrize("key", ["a_rw", "a_ro"])
async def test_a_tenant_key_cannot_see_or_change_another_tenant(env: Env, http: aiohttp.ClientSession, key: str) -> None:
    for method, path, body in other_tenant_requests(env):
        status, answer = await call(http, env, key, method, path, body)
        assert_error(status, answer, 404)
        # Same answer as for a tenant that does not exist: existence is not revealed.
        missing = path.replace(env.b, "no-such-tenant")
        _, for_missing = await call(http, env, key, method, missing, body)
        assert answer["error"]["message"].replace(env.b, "no-such-tenant") == for_missing["error"]["message"]
        assert answer["error"]["code"] == for_missing["error"]["code"]
    status, listed = await call(http, env, key, "GET", "/admin/v1/tenants")
    assert status == 200 and [t["id"] for t in listed["data"]] == [env.a]

    # Nothing of B changed, and B's key still works.
    _, tenant_b = await call(http, env, "ops", "GET", f"/admin/v1/tenants/{env.b}")
    assert (tenant_b["name"], tenant_b["disabled"]) == ("B", False)
    _, keys_b = await call(http, env, "ops", "GET", f"/admin/v1/tenants/{env.b}/keys")
    assert [(k["id"], k["revoked"]) for k in keys_b["data"]] == [(env.key_ids["b_rw"], False)]
    assert await chat(http, env, "b_rw") == 200


async def test_keys_without_admin_scopes_are_refused(env: Env, http: aiohttp.ClientSession) -> None:
    own = [("GET", "/admin/v1/tenants", None), ("GET", f"/admin/v1/tenants/{env.a}", None)]
    for method, path, body in [*other_tenant_requests(env), *own]:
        status, answer = await call(http, env, "a_none", method, path, body)
        assert_error(status, answer, 403)
        assert answer["error"]["type"] == "permission_error"
    for key in (None, "sk-not-a-key"):
        status, answer = await call(http, env, key, "GET", "/admin/v1/tenants")
        assert_error(status, answer, 401)


async def test_tenant_read_sees_only_its_own(env: Env, http: aiohttp.ClientSession) -> None:
    status, tenant = await call(http, env, "a_ro", "GET", f"/admin/v1/tenants/{env.a}")
    assert status == 200 and tenant["id"] == env.a
    status, keys = await call(http, env, "a_ro", "GET", f"/admin/v1/tenants/{env.a}/keys")
    assert status == 200 and {k["tenant"] for k in keys["data"]} == {env.a}
    text = str(keys) + str(tenant)
    assert "hash" not in keys["data"][0] and "hmac-sha256" not in text and env.keys["a_ro"] not in text
    status, audit = await call(http, env, "a_ro", "GET", "/admin/v1/audit")
    assert status == 200 and audit["data"] and {e["tenant"] for e in audit["data"]} == {env.a}
    for method, path, body in [
        ("PATCH", f"/admin/v1/tenants/{env.a}", {"name": "renamed"}),
        ("POST", f"/admin/v1/tenants/{env.a}/keys", {"scopes": []}),
        ("DELETE", f"/admin/v1/tenants/{env.a}/keys/{env.key_ids['a_none']}", None),
        ("POST", f"/admin/v1/tenants/{env.a}/disable", None),
        ("POST", "/admin/v1/tenants", {"id": f"new-{secrets.token_hex(3)}"}),
    ]:
        status, answer = await call(http, env, "a_ro", method, path, body)
        assert_error(status, answer, 403)


async def test_tenant_write_manages_its_keys_and_name_only(env: Env, http: aiohttp.ClientSession) -> None:
    a = env.a
    status, renamed = await call(http, env, "a_rw", "PATCH", f"/admin/v1/tenants/{a}", {"name": "A renamed"})
    assert status == 200 and renamed["name"] == "A renamed"
    for body in ({"priority": "critical"}, {"limits": {"rpm": 100000}}, {"weight": 50}, {"disabled": True}, {"budgets": []}):
        status, answer = await call(http, env, "a_rw", "PATCH", f"/admin/v1/tenants/{a}", body)
        assert_error(status, answer, 403)
    for body in ({"scopes": ["ops:*"]}, {"scopes": ["tenant:admin"]}, {"priority": "critical"}):
        status, answer = await call(http, env, "a_rw", "POST", f"/admin/v1/tenants/{a}/keys", body)
        assert_error(status, answer, 403)
    assert_error(*await call(http, env, "a_rw", "POST", f"/admin/v1/tenants/{a}/disable"), 403)
    assert_error(*await call(http, env, "a_rw", "POST", "/admin/v1/tenants", {"id": f"new-{secrets.token_hex(3)}"}), 403)

    status, created = await call(http, env, "a_rw", "POST", f"/admin/v1/tenants/{a}/keys", {"scopes": ["tenant:read"]})
    assert status == 201 and created["key"].startswith("sk-") and created["tenant"] == a
    assert await chat(http, env, created["key"]) == 200
    _, listed = await call(http, env, "a_rw", "GET", f"/admin/v1/tenants/{a}/keys")
    assert created["key"] not in str(listed)
    status, revoked = await call(http, env, "a_rw", "DELETE", f"/admin/v1/tenants/{a}/keys/{created['id']}")
    assert status == 200 and revoked["revoked"] is True
    assert await chat(http, env, created["key"]) == 401

    _, audit = await call(http, env, "a_rw", "GET", "/admin/v1/audit?limit=3")
    assert [(e["action"], e["actor"]) for e in audit["data"]][:2] == [
        ("key.revoke", f"{a}/{env.key_ids['a_rw']}"),
        ("key.create", f"{a}/{env.key_ids['a_rw']}"),
    ]
    assert created["key"] not in str(audit) and "hmac-sha256" not in str(audit)


async def test_ops_may_do_everything(env: Env, http: aiohttp.ClientSession) -> None:
    new = f"c-{secrets.token_hex(3)}"
    status, tenant = await call(http, env, "ops", "POST", "/admin/v1/tenants", {"id": new, "name": "C", "weight": 2})
    assert status == 201 and (tenant["id"], tenant["weight"]) == (new, 2)
    assert_error(*await call(http, env, "ops", "POST", "/admin/v1/tenants", {"id": new}), 409)
    patch = {"priority": "high", "limits": {"rpm": 10}, "budgets": [{"kind": "tokens", "period": "daily", "limit": 1000}]}
    status, tenant = await call(http, env, "ops", "PATCH", f"/admin/v1/tenants/{new}", patch)
    assert status == 200 and (tenant["priority"], tenant["limits"]["rpm"], tenant["budgets"][0]["limit"]) == ("high", 10, 1000)
    expires = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    spec = {"scopes": ["ops:*"], "expires_at": expires, "priority": "critical"}
    status, key = await call(http, env, "ops", "POST", f"/admin/v1/tenants/{new}/keys", spec)
    assert status == 201 and key["priority"] == "critical"
    assert await chat(http, env, key["key"]) == 200
    status, _ = await call(http, env, "ops", "DELETE", f"/admin/v1/tenants/{new}/keys/{key['id']}")
    assert status == 200 and await chat(http, env, key["key"]) == 401
    assert_error(*await call(http, env, "ops", "DELETE", f"/admin/v1/tenants/{new}/keys/no-such-key"), 404)

    status, listed = await call(http, env, "ops", "GET", "/admin/v1/tenants")
    assert {env.a, env.b, new} <= {t["id"] for t in listed["data"]}
    status, audit = await call(http, env, "ops", "GET", f"/admin/v1/audit?tenant={new}")
    assert [e["action"] for e in audit["data"]] == ["key.revoke", "key.create", "tenant.update", "tenant.create"]
    ops_actor = next(iter(audit["data"]))["actor"]
    assert ops_actor.endswith(env.key_ids["ops"])
    _, everything = await call(http, env, "ops", "GET", "/admin/v1/audit?limit=1000")
    assert {env.a, new} <= {e["tenant"] for e in everything["data"]}


async def test_disabling_a_tenant_stops_its_keys_only(env: Env, http: aiohttp.ClientSession) -> None:
    victim = f"d-{secrets.token_hex(3)}"
    await call(http, env, "ops", "POST", "/admin/v1/tenants", {"id": victim})
    _, key = await call(http, env, "ops", "POST", f"/admin/v1/tenants/{victim}/keys", {})
    assert await chat(http, env, key["key"]) == 200
    status, tenant = await call(http, env, "ops", "POST", f"/admin/v1/tenants/{victim}/disable")
    assert status == 200 and tenant["disabled"] is True
    assert await chat(http, env, key["key"]) == 401
    assert await chat(http, env, "a_rw") == 200


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/admin/v1/tenants", b"{not json"),
        ("/admin/v1/tenants", b"[]"),
        ("/admin/v1/tenants", b'{"id": "x-1", "unknown": 1}'),
        ("/admin/v1/tenants", b'{"id": "x-2", "weight": "heavy"}'),
        ("/admin/v1/tenants", b'{"id": "has spaces"}'),
        ("/admin/v1/tenants", b""),
        ("/admin/v1/tenants/{a}/keys", b'{"expires_at": "2001-01-01T00:00:00Z"}'),
        ("/admin/v1/tenants/{a}/keys", b'{"scopes": "ops:*"}'),
    ],
)
async def test_bad_input_is_a_400_in_the_openai_shape(env: Env, http: aiohttp.ClientSession, path: str, raw: bytes) -> None:
    status, answer = await call(http, env, "ops", "POST", path.format(a=env.a), raw=raw)
    assert_error(status, answer, 400)
    assert answer["error"]["type"] == "invalid_request_error"


async def test_bad_audit_limit_is_a_400(env: Env, http: aiohttp.ClientSession) -> None:
    for limit in ("0", "-1", "abc", "100000"):
        assert_error(*await call(http, env, "ops", "GET", f"/admin/v1/audit?limit={limit}"), 400)


async def test_unreachable_store_answers_503_quickly_never_500(fake_upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"  # nothing listens there
    config = make_config(fake_upstream.url, tenants=[], state={"tenants": "postgres", "postgres_dsn": closed})
    async with running_gateway(config) as (base, gateway):
        env = Env(base, gateway, "a", "b", {}, {})
        for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/admin/v1/tenants")]:
            started = time.monotonic()
            status, answer = await call(http, env, "sk-whatever", method, path, {"model": "fake-model", "messages": []})
            assert time.monotonic() - started < 3.0
            assert_error(status, answer, 503)
            assert answer["error"]["code"] == "tenant_store_unavailable"
        status, _ = await call(http, env, None, "GET", "/v1/models")
        assert status == 401  # no key at all is refused before the store is asked
