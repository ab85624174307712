"""The PostgreSQL config store beyond the contract: replicas, outages, the append-only table, the audit row.

Against the real PostgreSQL and Redis; each test has a database and a channel of its own.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import msgspec
import pytest
import redis.asyncio as redis

from core.config_version import ConfigStoreUnavailable, VersionConflict
from core.migrate import migrate
from router.config_store_postgres import PostgresConfigStore
from router.migrate import TENANCY
from tests.contract.test_config_store import REDIS_URL, document, scratch_database
from tests.contract.test_tenant_store import PgProxy
from tests.integration.rls_scratch import scratch

# What the gateway's ordinary role is granted (router/config_store_postgres.py).
GRANTS = """
GRANT SELECT, INSERT ON config_versions TO {role};
GRANT INSERT ON audit_log TO {role};
GRANT USAGE ON SEQUENCE audit_log_id_seq TO {role};
GRANT SELECT ON schema_migrations TO {role};
"""


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    async with scratch_database() as made:
        yield made


@pytest.fixture
def channel() -> str:
    return f"sg:config:test:{secrets.token_hex(6)}"


async def _eventually(check: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.02)


async def _subscribers(channel: str, count: int) -> None:
    """Wait until ``count`` listeners are subscribed: a message sent before that is lost to them."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        deadline = time.monotonic() + 5.0
        while dict(await client.pubsub_numsub(channel)).get(channel.encode(), 0) < count:
            assert time.monotonic() < deadline, "listeners did not subscribe"
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()


async def test_another_replica_hears_a_commit_through_redis(dsn: str, channel: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "sluicegate.config")
    writer, reader = PostgresConfigStore(dsn, REDIS_URL, channel=channel), PostgresConfigStore(dsn, REDIS_URL, channel=channel)
    heard: list[tuple[int, str]] = []
    reader.listen(lambda version, digest: heard.append((version, digest)))
    await writer.start()
    await reader.start()
    try:
        await _subscribers(channel, 2)
        record = await writer.commit(document(1), expected=0, actor="ops", reason="")
        await _eventually(lambda: heard == [(1, record.hash)])
        assert (await reader.get(1)).document == document(1)

        # Malformed announcements are dropped unread, and the listener goes on.
        client = redis.Redis.from_url(REDIS_URL)
        try:
            for junk in (b"secret-prompt-text", b'{"version": 0, "hash": "x"}', b'{"version": "2"}'):
                await client.publish(channel, junk)
        finally:
            await client.aclose()
        second = await writer.commit(document(2), expected=1, actor="ops", reason="")
        await _eventually(lambda: len(heard) == 2)
        assert heard == [(1, record.hash), (2, second.hash)]
        assert "secret-prompt-text" not in caplog.text and "malformed config announcement" in caplog.text
    finally:
        await writer.close()
        await reader.close()


async def test_the_listener_reconnects_after_losing_redis(dsn: str, channel: str) -> None:
    proxy = PgProxy(target_port=6379)
    await proxy.start()
    writer = PostgresConfigStore(dsn, REDIS_URL, channel=channel)
    reader = PostgresConfigStore(dsn, f"redis://127.0.0.1:{proxy.port}/0", channel=channel)
    heard: list[int] = []
    reader.listen(lambda version, digest: heard.append(version))
    await writer.start()
    await reader.start()
    try:
        await _subscribers(channel, 2)
        await proxy.stop()  # the reader's subscription is cut
        await writer.commit(document(1), expected=0, actor="ops", reason="while cut off")
        await proxy.start()
        await _subscribers(channel, 2)
        await writer.commit(document(2), expected=1, actor="ops", reason="after reconnecting")
        # Version 1 was missed (the reconcile loop's job); version 2 arrives over the new subscription.
        await _eventually(lambda: heard == [2])
    finally:
        await writer.close()
        await reader.close()
        await proxy.stop()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def _fails_within(call: Callable[[], Awaitable[object]], limit_s: float, secret: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigStoreUnavailable) as caught:
        await call()
    assert time.monotonic() - started < limit_s
    assert secret not in caught.value.message


@pytest.mark.parametrize("server", ["closed", "silent"])
async def test_an_unreachable_database_is_unavailable_within_the_timeout(server: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = PgProxy()
    if server == "silent":  # accepts, never answers: only the deadline ends the wait
        proxy.mode = "silent"
        await proxy.start()
    port = proxy.port if server == "silent" else _closed_port()
    secret = f"pw-{secrets.token_hex(4)}"
    store = PostgresConfigStore(f"postgresql://postgres:{secret}@127.0.0.1:{port}/nowhere", None, timeout_s=0.5)
    try:
        started = time.monotonic()
        await store.start()  # a replica starts while PostgreSQL is down
        assert time.monotonic() - started < 1.5
        await _fails_within(store.latest, 1.5, secret)
        await _fails_within(lambda: store.get(1), 1.5, secret)
        await _fails_within(store.history, 1.5, secret)
        await _fails_within(lambda: store.commit(document(1), expected=None, actor="ops", reason=""), 1.5, secret)
        assert secret not in caplog.text
    finally:
        await store.close()
        await proxy.stop()


async def _one_commit(dsn: str, actor: str, reason: str) -> str:
    store = PostgresConfigStore(dsn, None)
    await store.start()
    try:
        record = await store.commit(document(1), expected=0, actor=actor, reason=reason)
        with pytest.raises(VersionConflict):
            await store.commit(document(2), expected=0, actor="late", reason="loses")
        return record.hash
    finally:
        await store.close()


async def test_the_database_refuses_to_change_or_remove_a_version(dsn: str) -> None:
    digest = await _one_commit(dsn, "ops", "first")
    conn = await asyncpg.connect(dsn)
    try:
        for statement in ("UPDATE config_versions SET actor = 'someone'", "DELETE FROM config_versions", "TRUNCATE config_versions"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(statement)
        rows = await conn.fetch("SELECT version, hash, actor FROM config_versions")
        assert [tuple(r) for r in rows] == [(1, digest, "ops")]
    finally:
        await conn.close()


async def test_each_commit_writes_its_audit_row(dsn: str) -> None:
    digest = await _one_commit(dsn, "ops/alice", "raise limits")
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT actor, action, tenant_id, target, new_value FROM audit_log")
    finally:
        await conn.close()
    assert len(rows) == 1  # the losing commit left none
    row = rows[0]
    assert (row["actor"], row["action"], row["tenant_id"], row["target"]) == ("ops/alice", "config.commit", None, "config:v1")
    assert msgspec.json.decode(row["new_value"]) == {"version": 1, "hash": digest, "reason": "raise limits"}


async def test_an_ordinary_role_commits_under_row_level_security() -> None:
    async def prepare(owner_dsn: str, a: str, b: str) -> None:
        await migrate(owner_dsn, [TENANCY])

    async with scratch("sg_config_rls", GRANTS, prepare) as rls:
        await _one_commit(rls.role_dsn, "ops/bob", "as the gateway's role")
        owner = await asyncpg.connect(rls.owner_dsn)
        try:
            assert await owner.fetchval("SELECT actor FROM audit_log WHERE target = 'config:v1'") == "ops/bob"
        finally:
            await owner.close()


async def test_a_failed_announcement_does_not_fail_the_commit(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "sluicegate.config")
    store = PostgresConfigStore(dsn, f"redis://127.0.0.1:{_closed_port()}/0", timeout_s=1.0)
    heard: list[int] = []
    store.listen(lambda version, digest: heard.append(version))
    await store.start()
    try:
        record = await store.commit(document(1), expected=0, actor="ops", reason="")
        assert record.version == 1 and heard == [1] and (await store.get(1)).hash == record.hash
        assert "config version 1 not announced" in caplog.text
    finally:
        await store.close()
