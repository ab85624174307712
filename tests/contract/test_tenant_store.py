"""One behaviour for both tenant stores: the config file (in memory) and PostgreSQL.

The PostgreSQL store runs against a database created for this module and
dropped at its end. Below the contract: PostgreSQL-only behaviour (the audit
log refuses changes, outages fail closed within bounded time, migrations).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest

from core.config import BudgetConfig, Config, LimitsConfig, TenantConfig
from core.config_check import cross_check
from core.errors import InvalidRequest
from core.migrate import apply_migrations, load_migrations, migrate
from router.auth import hash_api_key
from router.migrate import ALL_SOURCES
from router.tenant_records import (
    AlreadyExists,
    ApiKey,
    KeyCreate,
    KeyNotFound,
    StoreUnavailable,
    TenantCreate,
    TenantNotFound,
    TenantStore,
    TenantUpdate,
)
from router.tenants_file import FileTenantStore
from router.tenants_postgres import PostgresTenantStore

ADMIN_DSN = os.environ.get("SLUICEGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PEPPER = b"contract-pepper"


def database_dsn(name: str) -> str:
    return f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"


NO_POSTGRES = "PostgreSQL is not reachable at SLUICEGATE_TEST_POSTGRES_DSN"


async def _scratch_database() -> tuple[asyncpg.Connection, str] | None:
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return None
    name = f"sg_tenants_{secrets.token_hex(6)}"
    await admin.execute(f"CREATE DATABASE {name}")
    return admin, name


@pytest.fixture(scope="module")
async def pg_database() -> AsyncIterator[str | None]:
    """A database for this module, dropped at its end (None: no server to test against)."""
    scratch = await _scratch_database()
    if scratch is None:
        yield None
        return
    admin, name = scratch
    try:
        yield database_dsn(name)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture
def pg_dsn(pg_database: str | None) -> str:
    if pg_database is None:
        pytest.skip(NO_POSTGRES)
    return pg_database


@pytest.fixture
async def scratch() -> AsyncIterator[str]:
    """A database of its own for one test."""
    made = await _scratch_database()
    if made is None:
        pytest.skip(NO_POSTGRES)
    admin, name = made
    try:
        yield database_dsn(name)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture(params=["config", "postgres"])
async def store(request: pytest.FixtureRequest, pg_database: str | None) -> AsyncIterator[TenantStore]:
    if request.param == "config":
        instance: TenantStore = FileTenantStore([], PEPPER)
    else:
        if pg_database is None:
            pytest.skip(NO_POSTGRES)
        instance = PostgresTenantStore(pg_database, PEPPER, timeout_s=5.0)
    await instance.start()
    yield instance
    await instance.close()


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def _tenant_with_key(store: TenantStore, **key: object) -> tuple[str, str, str]:
    """A fresh tenant with one key: (tenant id, key id, keyed hash)."""
    tenant = unique()
    await store.create_tenant(TenantCreate(id=tenant), "test")
    created = await store.create_key(tenant, msgspec.convert(key, KeyCreate), "test")
    return tenant, created.record.id, hash_api_key(created.key, PEPPER)


# --- the contract ------------------------------------------------------------


async def test_tenant_lifecycle(store: TenantStore) -> None:
    tid = unique()
    created = await store.create_tenant(TenantCreate(id=tid, name="Acme", priority="high", weight=3), "ops/k1")
    assert (created.name, created.priority, created.weight, created.disabled) == ("Acme", "high", 3, False)
    assert await store.get_tenant(tid) == created
    assert tid in [t.id for t in await store.list_tenants()]
    with pytest.raises(AlreadyExists):
        await store.create_tenant(TenantCreate(id=tid), "ops/k1")

    budget = BudgetConfig(kind="money", period="monthly", limit=5_000_000)
    patch = TenantUpdate(name="Acme Corp", limits=LimitsConfig(rpm=60), budgets=[budget])
    updated = await store.update_tenant(tid, patch, "ops/k1")
    assert (updated.name, updated.limits.rpm, updated.budgets, updated.priority) == ("Acme Corp", 60, [budget], "high")
    assert updated.updated_at >= created.updated_at
    assert await store.get_tenant(tid) == updated

    assert (await store.disable_tenant(tid, "ops/k1")).disabled
    assert (await store.get_tenant(tid)).disabled
    with pytest.raises(TenantNotFound):
        await store.get_tenant(unique())
    with pytest.raises(TenantNotFound):
        await store.update_tenant(unique(), TenantUpdate(name="x"), "ops")
    with pytest.raises(TenantNotFound):
        await store.disable_tenant(unique(), "ops")


async def test_key_is_shown_once_and_authenticates_by_its_hash(store: TenantStore) -> None:
    tid = unique()
    await store.create_tenant(TenantCreate(id=tid, priority="high", weight=2, limits=LimitsConfig(tpm=1000)), "test")
    created = await store.create_key(tid, KeyCreate(scopes=["tenant:read"], priority="low", limits=LimitsConfig(rpm=5)), "test")
    assert created.key.startswith("sk-") and len(created.key) > 40
    key_hash = hash_api_key(created.key, PEPPER)

    principal = await store.authenticate(key_hash)
    assert principal is not None
    assert (principal.tenant, principal.key_id, principal.scopes) == (tid, created.record.id, frozenset({"tenant:read"}))
    assert (principal.priority, principal.weight) == ("low", 2)
    assert (principal.tenant_limits.tpm, principal.key_limits) == (1000, LimitsConfig(rpm=5))
    assert await store.authenticate(hash_api_key(created.key)) is None  # the pepper is part of the hash
    assert await store.authenticate(hash_api_key("sk-never-issued", PEPPER)) is None

    listed = await store.list_keys(tid)
    assert [k.id for k in listed] == [created.record.id]
    assert "hash" not in ApiKey.__struct_fields__
    text = msgspec.json.encode(listed).decode()
    assert created.key not in text and key_hash.split(":")[1] not in text


async def test_key_priority_defaults_to_the_tenants(store: TenantStore) -> None:
    tid = unique()
    await store.create_tenant(TenantCreate(id=tid, priority="critical"), "test")
    created = await store.create_key(tid, KeyCreate(id=unique("key")), "test")
    principal = await store.authenticate(hash_api_key(created.key, PEPPER))
    assert principal is not None and principal.priority == "critical"
    with pytest.raises(AlreadyExists):
        await store.create_key(tid, KeyCreate(id=created.record.id), "test")
    with pytest.raises(TenantNotFound):
        await store.create_key(unique(), KeyCreate(), "test")


async def test_revoked_key_is_refused_at_once(store: TenantStore) -> None:
    tid, kid, key_hash = await _tenant_with_key(store)
    assert await store.authenticate(key_hash) is not None  # now cached
    revoked = await store.revoke_key(tid, kid, "ops/k1")
    assert revoked.revoked and revoked.revoked_at is not None
    assert await store.authenticate(key_hash) is None
    assert (await store.revoke_key(tid, kid, "ops/k1")).revoked  # idempotent
    assert [k.revoked for k in await store.list_keys(tid)] == [True]
    with pytest.raises(KeyNotFound):
        await store.revoke_key(tid, "no-such-key", "ops/k1")
    other, _, _ = await _tenant_with_key(store)
    with pytest.raises(KeyNotFound):
        await store.revoke_key(other, kid, "ops/k1")  # a key is revoked through its own tenant only


async def test_expired_key_is_refused(store: TenantStore) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1)
    _, _, key_hash = await _tenant_with_key(store, expires_at=soon.isoformat())
    assert await store.authenticate(key_hash) is not None
    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
    assert await store.authenticate(key_hash) is None
    with pytest.raises(InvalidRequest):
        await _tenant_with_key(store, expires_at=(datetime.now(UTC) - timedelta(seconds=1)).isoformat())


async def test_disabled_tenants_keys_are_refused_until_enabled(store: TenantStore) -> None:
    tid, _, key_hash = await _tenant_with_key(store)
    assert await store.authenticate(key_hash) is not None
    await store.disable_tenant(tid, "ops/k1")
    assert await store.authenticate(key_hash) is None
    await store.update_tenant(tid, TenantUpdate(disabled=False), "ops/k1")
    assert await store.authenticate(key_hash) is not None


async def test_tenant_changes_reach_cached_principals(store: TenantStore) -> None:
    tid, _, key_hash = await _tenant_with_key(store)
    before = await store.authenticate(key_hash)
    assert before is not None and before.tenant_limits.rpm is None
    await store.update_tenant(tid, TenantUpdate(limits=LimitsConfig(rpm=7), priority="low"), "ops/k1")
    after = await store.authenticate(key_hash)
    assert after is not None and (after.tenant_limits.rpm, after.priority) == (7, "low")


async def test_audit_records_every_change_without_secrets(store: TenantStore) -> None:
    tid = unique()
    await store.create_tenant(TenantCreate(id=tid, name="before"), "ops/k1")
    await store.update_tenant(tid, TenantUpdate(name="after"), "acme/k2")
    created = await store.create_key(tid, KeyCreate(scopes=["tenant:read"]), "cli")
    await store.revoke_key(tid, created.record.id, "cli")
    await store.disable_tenant(tid, "ops/k1")
    other, _, _ = await _tenant_with_key(store)

    entries = await store.list_audit(tid, 100)
    assert [e.action for e in entries] == ["tenant.disable", "key.revoke", "key.create", "tenant.update", "tenant.create"]
    assert [e.actor for e in entries] == ["ops/k1", "cli", "cli", "acme/k2", "ops/k1"]
    assert all(e.tenant == tid for e in entries)
    assert [e.id for e in entries] == sorted((e.id for e in entries), reverse=True)
    disable, revoke, key_create, update, create = entries
    assert (create.old, create.new and create.new["name"]) == (None, "before")
    assert (update.old and update.old["name"], update.new and update.new["name"]) == ("before", "after")
    assert key_create.target == f"key/{created.record.id}" and key_create.new and key_create.new["scopes"] == ["tenant:read"]
    assert (revoke.old and revoke.old["revoked"], revoke.new and revoke.new["revoked"]) == (False, True)
    assert (disable.old and disable.old["disabled"], disable.new and disable.new["disabled"]) == (False, True)

    text = msgspec.json.encode(await store.list_audit(None, 1000)).decode()
    assert created.key not in text and hash_api_key(created.key, PEPPER).split(":")[1] not in text and "hmac-sha256" not in text
    assert [e.action for e in await store.list_audit(tid, 2)] == ["tenant.disable", "key.revoke"]
    assert {e.tenant for e in await store.list_audit(other, 100)} == {other}
    assert {tid, other} <= {e.tenant for e in await store.list_audit(None, 1000)}


async def test_a_system_event_is_appended_to_the_audit_log(store: TenantStore) -> None:
    tid = unique()
    await store.create_tenant(TenantCreate(id=tid), "ops/k1")
    event = {"type": "budget.threshold", "threshold": 80, "budget": {"kind": "tokens", "period": "monthly", "limit": 100}}
    await store.record_event("system", "budget.threshold", tid, "budget/tenant/tokens/month:2026-11", event)
    newest = (await store.list_audit(tid, 1))[0]
    assert (newest.actor, newest.action, newest.tenant) == ("system", "budget.threshold", tid)
    assert (newest.target, newest.old, newest.new) == ("budget/tenant/tokens/month:2026-11", None, event)
    await store.record_event("system", "budget.threshold", None, "budget/none", {"n": 1})
    assert (await store.list_audit(None, 1))[0].target == "budget/none"
    assert all(e.tenant == tid for e in await store.list_audit(tid, 100))


async def test_key_ids_are_unique_per_tenant_only(store: TenantStore) -> None:
    a, b = unique(), unique()
    for tenant in (a, b):
        await store.create_tenant(TenantCreate(id=tenant), "test")
    kid = unique("k")
    first = await store.create_key(a, KeyCreate(id=kid, scopes=["tenant:read"]), "test")
    # B may take the id A holds: nothing in the answer tells B that A has it.
    second = await store.create_key(b, KeyCreate(id=kid), "test")
    assert (second.record.id, second.record.tenant, second.record.scopes) == (kid, b, [])
    with pytest.raises(AlreadyExists):
        await store.create_key(a, KeyCreate(id=kid), "test")  # within a tenant an id is still taken
    hash_a, hash_b = hash_api_key(first.key, PEPPER), hash_api_key(second.key, PEPPER)
    principal_a, principal_b = await store.authenticate(hash_a), await store.authenticate(hash_b)
    assert principal_a is not None and (principal_a.tenant, principal_a.key_id, principal_a.scopes) == (a, kid, {"tenant:read"})
    assert principal_b is not None and (principal_b.tenant, principal_b.key_id, principal_b.scopes) == (b, kid, frozenset())
    assert [(k.tenant, k.scopes) for k in await store.list_keys(b)] == [(b, [])]

    assert (await store.revoke_key(b, kid, "test")).tenant == b
    assert await store.authenticate(hash_b) is None
    assert await store.authenticate(hash_a) is not None  # A's key of the same id is untouched
    assert [(k.id, k.revoked) for k in await store.list_keys(a)] == [(kid, False)]
    assert [e.action for e in await store.list_audit(b, 10)] == ["key.revoke", "key.create", "tenant.create"]
    assert [e.action for e in await store.list_audit(a, 10)] == ["key.create", "tenant.create"]


# --- the config-file store ---------------------------------------------------


async def test_config_file_tenants_and_keys_are_loaded() -> None:
    past = datetime.now(UTC) - timedelta(seconds=5)
    tenants = msgspec.convert(
        [
            {
                "id": "acme",
                "priority": "high",
                "keys": [
                    {"id": "k-live", "hash": hash_api_key("sk-live", PEPPER), "scopes": ["tenant:read"]},
                    {"id": "k-off", "hash": hash_api_key("sk-off", PEPPER), "disabled": True},
                    {"id": "k-old", "hash": hash_api_key("sk-old", PEPPER), "expires_at": past.isoformat()},
                ],
            },
            {"id": "gone", "disabled": True, "keys": [{"id": "k-gone", "hash": hash_api_key("sk-gone", PEPPER)}]},
        ],
        list[TenantConfig],
    )
    store = FileTenantStore(tenants, PEPPER)
    principal = await store.authenticate(hash_api_key("sk-live", PEPPER))
    assert principal is not None and (principal.tenant, principal.key_id, principal.priority) == ("acme", "k-live", "high")
    for key in ("sk-off", "sk-old", "sk-gone"):
        assert await store.authenticate(hash_api_key(key, PEPPER)) is None
    assert [k.revoked for k in await store.list_keys("acme")] == [False, True, False]
    assert await store.list_audit() == []


async def test_config_file_key_ids_are_unique_within_their_tenant() -> None:
    def tenant(tid: str, *key_ids: str) -> dict[str, object]:
        return {"id": tid, "keys": [{"id": k, "hash": hash_api_key(f"sk-{tid}-{n}", PEPPER)} for n, k in enumerate(key_ids)]}

    both = msgspec.convert({"tenants": [tenant("a", "k1"), tenant("b", "k1")]}, Config)
    assert cross_check(both) == []
    store = FileTenantStore(both.tenants, PEPPER)
    for tid in ("a", "b"):
        principal = await store.authenticate(hash_api_key(f"sk-{tid}-0", PEPPER))
        assert principal is not None and (principal.tenant, principal.key_id) == (tid, "k1")
    problems = cross_check(msgspec.convert({"tenants": [tenant("a", "k1"), tenant("b", "k2", "k2")]}, Config))
    assert problems == ["key `tenants[1].keys`: duplicate name 'k2'"]


# --- PostgreSQL only ---------------------------------------------------------


class PgProxy:
    """A TCP hop in front of PostgreSQL that can be cut (refuse) or made silent (accept, never answer)."""

    def __init__(self, target_port: int = 5432) -> None:
        self.target_port = target_port
        self.mode = "forward"
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones, as a dead server would."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.mode == "silent":
            return  # hold the connection open and never answer
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.add(up_writer)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.transport.abort()


async def _timed_refusal(store: PostgresTenantStore, key_hash: str) -> float:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.authenticate(key_hash)
    return time.monotonic() - started


async def test_outage_keeps_cached_keys_within_stale_ttl_and_refuses_the_rest(pg_dsn: str) -> None:
    proxy = PgProxy()
    await proxy.start()
    store = PostgresTenantStore(proxy.dsn(pg_dsn.rsplit("/", 1)[1]), PEPPER, cache_ttl_s=0.2, stale_ttl_s=1.5, timeout_s=0.5)
    await store.start()
    try:
        _, _, key_hash = await _tenant_with_key(store)
        assert await store.authenticate(key_hash) is not None
        loaded = time.monotonic()
        await proxy.stop()
        await asyncio.sleep(0.3)  # past the fresh TTL: the store is asked again and cannot answer
        assert await store.authenticate(key_hash) is not None
        assert await _timed_refusal(store, hash_api_key("sk-unknown-1", PEPPER)) < 1.0
        with pytest.raises(StoreUnavailable):
            await store.list_tenants()
        await asyncio.sleep(max(0.0, loaded + 1.6 - time.monotonic()))
        assert await _timed_refusal(store, key_hash) < 1.0  # beyond the stale TTL even a cached key is refused

        proxy.mode = "silent"  # accepts, never answers: only the timeout ends the wait
        await proxy.start()
        assert await _timed_refusal(store, hash_api_key("sk-unknown-2", PEPPER)) < 1.5

        await proxy.stop()
        proxy.mode = "forward"
        await proxy.start()
        assert await store.authenticate(key_hash) is not None  # recovers without a restart
    finally:
        await store.close()
        await proxy.stop()


async def test_a_replica_without_the_bus_revalidates_after_its_cache_ttl(pg_dsn: str) -> None:
    first = PostgresTenantStore(pg_dsn, PEPPER)
    second = PostgresTenantStore(pg_dsn, PEPPER, cache_ttl_s=0.5)
    await first.start()
    await second.start()
    try:
        tid, kid, key_hash = await _tenant_with_key(first)
        assert await second.authenticate(key_hash) is not None
        await first.revoke_key(tid, kid, "ops/k1")
        assert await second.authenticate(key_hash) is not None  # no message: still cached
        await asyncio.sleep(0.6)
        assert await second.authenticate(key_hash) is None
    finally:
        await first.close()
        await second.close()


async def test_audit_log_refuses_updates_and_deletes(pg_dsn: str) -> None:
    store = PostgresTenantStore(pg_dsn, PEPPER)
    await store.start()
    await store.create_tenant(TenantCreate(id=unique()), "ops/k1")
    await store.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        for statement in ("UPDATE audit_log SET actor = 'someone'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(statement)
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE actor = 'someone'") == 0
    finally:
        await conn.close()


async def test_one_runner_one_table_for_every_schema(scratch: str) -> None:
    conns = [await asyncpg.connect(scratch) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(apply_migrations(c, ALL_SOURCES) for c in conns))
        expected = [m.label for m in load_migrations(ALL_SOURCES)]
        assert {"ledger/0001", "tenancy/1001"} <= set(expected)
        assert sorted(applied, key=len) == [[], [], expected]  # exactly one runner applied, the others waited
        rows = await conns[0].fetch("SELECT namespace, version FROM schema_migrations ORDER BY namespace, version")
        assert [f"{r['namespace']}/{r['version']:04d}" for r in rows] == sorted(expected)
        assert await migrate(scratch, ALL_SOURCES) == []
    finally:
        for conn in conns:
            await conn.close()


@pytest.mark.parametrize("first", ["shared", "ledger_only"])
async def test_the_ledgers_own_runner_and_the_shared_one_agree(scratch: str, first: str) -> None:
    from budgets import migrate as ledger_runner

    conn = await asyncpg.connect(scratch)
    try:
        if first == "shared":
            await apply_migrations(conn, ALL_SOURCES)
            assert await ledger_runner.apply_migrations(conn) == []
        else:
            assert await ledger_runner.apply_migrations(conn) != []
            assert {m.split("/")[0] for m in await apply_migrations(conn, ALL_SOURCES)} == {"tenancy"}
        assert await ledger_runner.apply_migrations(conn) == [] and await apply_migrations(conn, ALL_SOURCES) == []
    finally:
        await conn.close()
