"""The production config store: versions in PostgreSQL, announced to every replica over Redis pub/sub.

A commit is one transaction: an advisory lock serializes writers, the newest
version is compared with the writer's ``expected``, the version row and its
audit row are inserted, and only after the commit is ``{"version", "hash"}``
published on the channel. The document is kept as its canonical JSON text, so
the hash reads back reproducible. Listeners on this replica hear its own
commits at once and everyone else's through Redis; a version is told to them
once, however many ways it arrives. A lost announcement (Redis down, a
reconnect) is not repaired here: the gateway's reconcile loop reads the newest
version from PostgreSQL.

Every call is bounded by ``timeout_s``; PostgreSQL unreachable, slow or failing
becomes ``ConfigStoreUnavailable`` and neither errors nor logs carry the DSN.
The gateway connects as an ordinary role; it needs SELECT and INSERT on
``config_versions``, INSERT on ``audit_log`` and USAGE on ``audit_log_id_seq``
(the audit row is written under row-level security, scoped to every tenant),
and SELECT on ``schema_migrations``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import asyncpg
import msgspec
import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from core.config import LiveConfig
from core.config_check import decode_live
from core.config_version import (
    ConfigStoreUnavailable,
    ConfigVersion,
    VersionConflict,
    VersionNotFound,
    VersionSummary,
    canonical,
    document_hash,
)
from core.migrate import apply_migrations
from core.pg_scope import scope
from router.config_store import Listener
from router.migrate import TENANCY

log = logging.getLogger("sluicegate.config")
T = TypeVar("T")

CHANNEL = "sg:config:versions"
# Held by a commit's transaction: writers on every replica take turns. Next to the
# migration lock (...01) and the ledger's (...02, budgets/migrations/0002).
COMMIT_LOCK_KEY = 0x51_0C_65_00_00_00_00_03
_POOL_SIZE = 3
# Schema changes may wait on another replica's lock: more time than a query gets.
_MIGRATE_TIMEOUT_S = 30.0
_RECONNECT_MAX_S = 5.0
# Versions already told to the listeners: enough to recognise our own commits' echoes.
_REMEMBERED = 1024
_MAX_BIGINT = 2**63 - 1
_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

_SUMMARY = "version, hash, actor, reason, extract(epoch FROM created_at)::float8 AS created_at"
_LATEST = f"SELECT {_SUMMARY}, document FROM config_versions ORDER BY version DESC LIMIT 1"
_GET = f"SELECT {_SUMMARY}, document FROM config_versions WHERE version = $1"
_HISTORY = (
    f"SELECT {_SUMMARY} FROM config_versions WHERE ($2::bigint IS NULL OR version < $2) ORDER BY version DESC LIMIT $1"
)
_NEWEST = "SELECT coalesce(max(version), 0) FROM config_versions"
_INSERT = (
    # clock_timestamp(), not now(): the time of the commit, after the lock, so versions never date backwards.
    "INSERT INTO config_versions (version, hash, actor, reason, document, created_at) VALUES ($1, $2, $3, $4, $5, clock_timestamp())"
    " RETURNING extract(epoch FROM created_at)::float8"
)
_AUDIT = "INSERT INTO audit_log (actor, action, tenant_id, target, new_value) VALUES ($1, 'config.commit', NULL, $2, $3::jsonb)"


class Announcement(msgspec.Struct, frozen=True):
    """What the channel carries: a replica reads the document itself from PostgreSQL."""

    version: Annotated[int, msgspec.Meta(ge=1)]
    hash: str


class PostgresConfigStore:
    def __init__(
        self,
        dsn: str,
        redis_url: str | None,
        *,
        timeout_s: float = 5.0,
        channel: str = CHANNEL,
        # Unused: commits are dated by the database's clock, so every replica's history agrees.
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dsn = dsn
        self._redis_url = redis_url
        self._timeout_s = timeout_s
        self._channel = channel
        self._pool: asyncpg.Pool | None = None
        self._migrated = False
        self._migrate_lock = asyncio.Lock()
        self._listeners: list[Listener] = []
        self._told: dict[tuple[int, str], None] = {}
        self._publisher: redis.Redis | None = None
        self._subscriber: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # A replica starts even while PostgreSQL is down; every call then fails until it is back.
        t = self._timeout_s
        self._pool = pool = await asyncpg.create_pool(self._dsn, min_size=0, max_size=_POOL_SIZE, timeout=t, command_timeout=t)
        if self._redis_url is not None and self._subscriber is None:
            self._subscriber = asyncio.create_task(self._subscribe(self._redis_url))
        try:
            async with asyncio.timeout(_MIGRATE_TIMEOUT_S), pool.acquire() as conn:
                await self._migrate(conn)
        except _UNAVAILABLE as exc:
            log.warning("config store schema not checked at start (%s); retrying on first use", type(exc).__name__)

    async def close(self) -> None:
        if self._subscriber is not None:
            self._subscriber.cancel()
            await asyncio.gather(self._subscriber, return_exceptions=True)
            self._subscriber = None
        if self._publisher is not None:
            await self._publisher.aclose()
            self._publisher = None
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), self._timeout_s)
            except (TimeoutError, *_UNAVAILABLE):
                self._pool.terminate()
            self._pool = None

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # --- reading ---------------------------------------------------------------

    async def latest(self) -> ConfigVersion | None:
        row = await self._run(lambda conn: conn.fetchrow(_LATEST))
        return None if row is None else _version(row)

    async def get(self, version: int) -> ConfigVersion:
        row = await self._run(lambda conn: conn.fetchrow(_GET, version)) if 1 <= version <= _MAX_BIGINT else None
        if row is None:
            raise VersionNotFound(f"No config version {version}.")
        return _version(row)

    async def history(self, limit: int = 50, before: int | None = None) -> list[VersionSummary]:
        # Beyond the column's range ``before`` bounds nothing.
        bound = before if before is None or before <= _MAX_BIGINT else None
        rows = await self._run(lambda conn: conn.fetch(_HISTORY, max(0, limit), bound))
        return [msgspec.convert(dict(r), VersionSummary) for r in rows]

    # --- writing ---------------------------------------------------------------

    async def commit(self, document: LiveConfig, *, expected: int | None, actor: str, reason: str) -> ConfigVersion:
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        body, digest = canonical(document).decode(), document_hash(document)

        async def op(conn: asyncpg.Connection) -> tuple[int, float]:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", COMMIT_LOCK_KEY)
                current = int(await conn.fetchval(_NEWEST))
                if expected is not None and expected != current:
                    raise VersionConflict(f"Config version {expected} is not the latest (the latest is {current}).")
                version = current + 1
                created_at = float(await conn.fetchval(_INSERT, version, digest, actor, reason, body))
                await scope(conn, None)  # an operator's audit row names no tenant: visible under ALL only
                audit = msgspec.json.encode({"version": version, "hash": digest, "reason": reason}).decode()
                await conn.execute(_AUDIT, actor, f"config:v{version}", audit)
                return version, created_at

        version, created_at = await self._run(op, deadline)
        record = ConfigVersion(version=version, hash=digest, actor=actor, reason=reason, created_at=created_at, document=document)
        self._tell(version, digest)
        await self._publish(Announcement(version, digest), deadline)
        return record

    async def _run(self, op: Callable[[asyncpg.Connection], Awaitable[T]], deadline: float | None = None) -> T:
        """``op`` on a pooled connection by the deadline (``timeout_s`` from now if not given)."""
        if self._pool is None:
            raise ConfigStoreUnavailable("The config store is not started.", retry_after=1)
        when = asyncio.get_running_loop().time() + self._timeout_s if deadline is None else deadline
        try:
            async with asyncio.timeout_at(when), self._pool.acquire() as conn:
                if not self._migrated:
                    await self._migrate(conn)
                return await op(conn)
        except _UNAVAILABLE as exc:
            if isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, asyncpg.PostgresConnectionError):
                log.warning("config store query failed: %s", type(exc).__name__)
            raise ConfigStoreUnavailable("The config store is unavailable; try again shortly.", retry_after=1) from None

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with self._migrate_lock:
            if not self._migrated:
                await apply_migrations(conn, [TENANCY])
                self._migrated = True

    # --- announcing --------------------------------------------------------------

    def _tell(self, version: int, digest: str) -> None:
        """Tell the listeners of a version once, however many times it is heard.

        Keyed by version and hash: another deployment announcing on the same
        Redis server (pub/sub ignores the database number) never hides ours.
        """
        if (version, digest) in self._told:
            return
        self._told[version, digest] = None
        if len(self._told) > _REMEMBERED:
            del self._told[next(iter(self._told))]
        for listener in list(self._listeners):
            try:
                listener(version, digest)
            except Exception:
                # The version is committed: one listener's failure must not undo that for the caller.
                log.exception("config version listener failed")

    async def _publish(self, announcement: Announcement, deadline: float) -> None:
        if self._redis_url is None:
            return
        if self._publisher is None:
            t = self._timeout_s
            self._publisher = redis.Redis.from_url(self._redis_url, socket_connect_timeout=t, socket_timeout=t)
        try:
            async with asyncio.timeout_at(deadline):
                await self._publisher.publish(self._channel, msgspec.json.encode(announcement))
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "config version %d not announced (%s); other replicas find it at their next reconcile",
                announcement.version,
                type(exc).__name__,
            )

    async def _subscribe(self, url: str) -> None:
        delay = 0.1
        while True:
            client = redis.Redis.from_url(url, socket_connect_timeout=self._timeout_s, health_check_interval=10)
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    delay = 0.1
                    await self._consume(pubsub)
            except (RedisError, OSError) as exc:
                log.warning("config announcements lost Redis (%s); reconnecting", type(exc).__name__)
            finally:
                await client.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_S)

    async def _consume(self, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None or message.get("type") != "message":
                continue
            try:
                heard = msgspec.json.decode(message["data"], type=Announcement)
            except msgspec.DecodeError:
                log.warning("malformed config announcement ignored on %s", self._channel)
                continue
            self._tell(heard.version, heard.hash)


def _version(row: asyncpg.Record) -> ConfigVersion:
    document = decode_live(row["document"].encode(), f"config version {row['version']}")
    fields = {k: row[k] for k in VersionSummary.__struct_fields__}
    return ConfigVersion(**fields, document=document)
