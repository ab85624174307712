"""Row-level security on the tenancy tables (tenants, api_keys, audit_log), against the real PostgreSQL.

A superuser bypasses every policy, and the test server's `postgres` is one: so
the migrations are applied by the owner, and the queries run as an ordinary
role granted what the gateway needs (``router.tenants_postgres``). As that role:
with no tenant set nothing is visible, with tenant A set only A's rows, and a
row of B's cannot be written under A. Then the gateway itself runs on that role:
the admin API and authentication work with the policies on.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from bench.fake_upstream import FakeUpstream
from core.migrate import migrate
from core.pg_scope import ALL, SETTING, policy_sql, scope
from router.migrate import TENANCY
from router.tenant_records import KeyCreate, TenantCreate
from tests.conftest import make_config
from tests.integration.gateway_server import running_gateway
from tests.integration.rls_scratch import Rls, as_role, scratch

TABLES = {"tenants": "id", "api_keys": "tenant_id", "audit_log": "tenant_id"}
GRANTS = """
GRANT SELECT, INSERT, UPDATE ON tenants, api_keys TO {role};
GRANT SELECT, INSERT ON audit_log TO {role};
GRANT USAGE ON SEQUENCE audit_log_id_seq TO {role};
GRANT SELECT ON schema_migrations TO {role};
"""


async def _seed(owner_dsn: str, a: str, b: str) -> None:
    conn = await asyncpg.connect(owner_dsn)
    try:
        for tenant in (a, b):
            await conn.execute("INSERT INTO tenants (id) VALUES ($1)", tenant)
            await conn.execute(
                "INSERT INTO api_keys (id, tenant_id, hash) VALUES ('k-' || $1, $1, $2)", tenant, f"hmac-sha256:{secrets.token_hex(32)}"
            )
            await conn.execute("INSERT INTO audit_log (actor, action, tenant_id, target) VALUES ('cli', 'tenant.create', $1, 't')", tenant)
        # An operator-level entry, about no tenant.
        await conn.execute("INSERT INTO audit_log (actor, action, tenant_id, target) VALUES ('cli', 'ops.note', NULL, 'x')")
    finally:
        await conn.close()


async def _prepare(owner_dsn: str, a: str, b: str) -> None:
    await migrate(owner_dsn, [TENANCY])
    await _seed(owner_dsn, a, b)


@pytest.fixture(scope="module")
async def rls() -> AsyncIterator[Rls]:
    async with scratch("sg_rls_tenancy", GRANTS, _prepare) as env:
        yield env


@pytest.fixture
async def conn(rls: Rls) -> AsyncIterator[asyncpg.Connection]:
    async with as_role(rls) as connection:
        yield connection


async def _tenants_of(conn: asyncpg.Connection, table: str) -> set[str | None]:
    return {r[0] for r in await conn.fetch(f"SELECT {TABLES[table]} FROM {table}")}


async def test_without_a_tenant_set_every_tenancy_table_looks_empty(conn: asyncpg.Connection, rls: Rls) -> None:
    for table in TABLES:
        assert await conn.fetch(f"SELECT * FROM {table}") == []  # never set on this connection
    async with conn.transaction():
        await scope(conn, None)
        for table in TABLES:
            assert {rls.a, rls.b} <= await _tenants_of(conn, table)  # the rows are there
    # The setting was the transaction's own: the next one sees nothing again.
    async with conn.transaction():
        for table in TABLES:
            assert await conn.fetch(f"SELECT * FROM {table}") == []


async def test_a_tenant_set_sees_only_its_own_rows(conn: asyncpg.Connection, rls: Rls) -> None:
    async with conn.transaction():
        await scope(conn, rls.a)
        for table in TABLES:
            assert await _tenants_of(conn, table) == {rls.a}
        assert await conn.fetch("SELECT * FROM api_keys WHERE tenant_id = $1", rls.b) == []
    async with conn.transaction():
        await scope(conn, ALL)
        # Audit entries about no tenant are the operators': seen only under ALL.
        assert {rls.a, rls.b, None} <= await _tenants_of(conn, "audit_log")


WRITES_UNDER_A = [
    ("INSERT INTO tenants (id) VALUES ('c-' || $1)", "b"),
    ("INSERT INTO api_keys (id, tenant_id, hash) VALUES ('k2', $1, 'hmac-sha256:' || repeat('0', 64))", "b"),
    ("INSERT INTO audit_log (actor, action, tenant_id, target) VALUES ('x', 'y', $1, 'z')", "b"),
    ("INSERT INTO audit_log (actor, action, tenant_id, target) VALUES ('x', 'y', NULL, 'z')", None),  # operators' only
    ("UPDATE api_keys SET tenant_id = $1", "b"),  # moving A's key to B
]


@pytest.mark.parametrize(("statement", "whose"), WRITES_UNDER_A)
async def test_writing_another_tenants_row_under_a_tenant_is_refused(
    conn: asyncpg.Connection, rls: Rls, statement: str, whose: str | None
) -> None:
    args = () if whose is None else (getattr(rls, whose),)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        async with conn.transaction():
            await scope(conn, rls.a)
            await conn.execute(statement, *args)


async def test_another_tenants_rows_cannot_be_changed_under_a_tenant(conn: asyncpg.Connection, rls: Rls) -> None:
    transaction = conn.transaction()
    await transaction.start()
    try:
        await scope(conn, rls.a)
        assert await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1", rls.b) == "UPDATE 0"
        # The same insert that is refused under A is accepted under B: the policy refuses, not a missing grant.
        await scope(conn, rls.b)
        await conn.execute("INSERT INTO api_keys (id, tenant_id, hash) VALUES ('k3', $1, 'hmac-sha256:' || repeat('1', 64))", rls.b)
    finally:
        await transaction.rollback()


async def test_the_migration_puts_each_table_under_the_convention(rls: Rls) -> None:
    sql = (TENANCY[1] / "1003_row_level_security.sql").read_text(encoding="utf-8")
    owner = await asyncpg.connect(rls.owner_dsn)
    try:
        for table, column in TABLES.items():
            assert policy_sql(table, column) in sql
            flags = await owner.fetchrow("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = $1", table)
            assert tuple(flags) == (True, True)
    finally:
        await owner.close()


# --- the gateway on the ordinary role ------------------------------------------

# Every change's audit row is written in the change's transaction: its scope must be that tenant, not ALL.
_SCOPE_WATCH = f"""
CREATE FUNCTION scope_watch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('{SETTING}', true) IS DISTINCT FROM NEW.tenant_id THEN
        RAISE EXCEPTION 'audit row of % written under scope %', NEW.tenant_id, current_setting('{SETTING}', true);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER scope_watch BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION scope_watch();
"""


@pytest.fixture
async def scope_watch(rls: Rls) -> AsyncIterator[None]:
    owner = await asyncpg.connect(rls.owner_dsn)
    try:
        await owner.execute(_SCOPE_WATCH)
        yield
        await owner.execute("DROP TRIGGER scope_watch ON audit_log; DROP FUNCTION scope_watch()")
    finally:
        await owner.close()


async def test_the_gateway_serves_the_admin_api_and_authenticates_as_an_ordinary_role(
    rls: Rls, fake_upstream: FakeUpstream, scope_watch: None
) -> None:
    # The role may not create tables: the store's check at start finds the schema current and changes nothing.
    config = make_config(fake_upstream.url, tenants=[], state={"tenants": "postgres", "postgres_dsn": rls.role_dsn})
    async with running_gateway(config) as (base, gateway), aiohttp.ClientSession() as http:
        store, suffix = gateway.tenants, secrets.token_hex(3)
        ops, a, b = f"ops-{suffix}", f"ga-{suffix}", f"gb-{suffix}"
        keys = {}
        for tenant, scopes in ((ops, ["ops:*"]), (a, ["tenant:write"]), (b, ["tenant:write"])):
            await store.create_tenant(TenantCreate(id=tenant), "test")
            keys[tenant] = (await store.create_key(tenant, KeyCreate(id="admin", scopes=scopes), "test")).key

        async def call(key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
            headers = {"authorization": f"Bearer {key}"}
            async with http.request(method, f"{base}{path}", json=body, headers=headers) as resp:
                return resp.status, await resp.json(content_type=None)

        async def chat(key: str) -> int:
            body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
            return (await call(key, "POST", "/v1/chat/completions", body))[0]

        status, listed = await call(keys[ops], "GET", "/admin/v1/tenants")
        assert status == 200 and {ops, a, b, rls.a, rls.b} <= {t["id"] for t in listed["data"]}
        minted = {}
        for tenant in (a, b):  # the same key id in two tenants
            status, created = await call(keys[tenant], "POST", f"/admin/v1/tenants/{tenant}/keys", {"id": "shared"})
            assert status == 201 and (created["id"], created["tenant"]) == ("shared", tenant), created
            minted[tenant] = created["key"]
        assert [await chat(minted[a]), await chat(minted[b])] == [200, 200]
        status, _ = await call(keys[a], "DELETE", f"/admin/v1/tenants/{a}/keys/shared")
        assert status == 200 and [await chat(minted[a]), await chat(minted[b])] == [401, 200]

        status, own = await call(keys[a], "GET", f"/admin/v1/tenants/{a}/keys")
        assert status == 200 and [(k["id"], k["revoked"]) for k in own["data"]] == [("admin", False), ("shared", True)]
        assert (await call(keys[a], "GET", f"/admin/v1/tenants/{b}/keys"))[0] == 404
        status, audit = await call(keys[a], "GET", "/admin/v1/audit")
        assert status == 200 and {e["tenant"] for e in audit["data"]} == {a}
        status, audit = await call(keys[ops], "GET", "/admin/v1/audit?limit=1000")
        assert status == 200 and {a, b, None} <= {e["tenant"] for e in audit["data"]}
        status, renamed = await call(keys[a], "PATCH", f"/admin/v1/tenants/{a}", {"name": "A"})
        assert status == 200 and renamed["name"] == "A"
