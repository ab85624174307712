"""One migration runner for every schema in the gateway's PostgreSQL database.

A source is a namespace and a directory of ``NNNN_description.sql`` files
(``router.migrate`` lists the gateway's: ``tenancy`` and ``ledger``). All
sources share one ``schema_migrations`` table keyed by (namespace, version) and
are named by both, e.g. ``ledger/0001``. Each file is applied in its own
transaction; a session advisory lock lets many replicas start at once.

Compatibility with the earlier single-directory runner (``budgets.migrate``),
which knows only ``version``: a table in its layout is upgraded in place, rows
it inserts get the ``ledger`` namespace by default, and namespaces other than
the ledger number their files from 1001 so it never mistakes them for its own.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import asyncpg
import msgspec

Source = tuple[str, Path]
# Held while migrating, so that replicas starting together apply each file once.
MIGRATION_LOCK_KEY = 0x51_0C_65_00_00_00_00_01
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    namespace  text        NOT NULL DEFAULT 'ledger',
    version    integer     NOT NULL,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, version)
)
"""

class MigrationError(RuntimeError):
    pass


class Migration(msgspec.Struct, frozen=True):
    namespace: str
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.version:04d}"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(sources: list[Source]) -> list[Migration]:
    """Every migration of every source, sources in the order given, versions ascending."""
    out: list[Migration] = []
    for namespace, directory in sources:
        found: dict[int, Migration] = {}
        for path in sorted(directory.glob("*.sql")):
            match = _NAME.match(path.name)
            if match is None:
                raise MigrationError(f"{namespace}: migration file {path.name!r} is not named NNNN_description.sql")
            version = int(match.group(1))
            if version in found:
                raise MigrationError(f"{namespace}: two migration files share version {version:04d}")
            found[version] = Migration(namespace, version, match.group(2), path.read_text(encoding="utf-8"))
        out += [found[v] for v in sorted(found)]
    return out


async def apply_migrations(conn: asyncpg.Connection, sources: list[Source]) -> list[str]:
    """Apply what is missing; returns the labels (``namespace/NNNN``) applied by this call."""
    migrations = load_migrations(sources)
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        # Only when missing: a replica connected as an ordinary role (as it must be
        # for row-level security to bind it) may read this table, not create one.
        if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
            await conn.execute(_BOOKKEEPING)
        rows = await conn.fetch("SELECT namespace, version, checksum FROM schema_migrations")
        applied = {(str(r["namespace"]), int(r["version"])): str(r["checksum"]) for r in rows}
        done: list[str] = []
        for migration in migrations:
            recorded = applied.get((migration.namespace, migration.version))
            if recorded is not None:
                if recorded != migration.checksum:
                    raise MigrationError(f"migration {migration.label} changed after it was applied")
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (namespace, version, name, checksum) VALUES ($1, $2, $3, $4)",
                    migration.namespace,
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(migration.label)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def migrate(dsn: str, sources: list[Source], *, timeout_s: float = 10.0) -> list[str]:
    conn = await asyncpg.connect(dsn, timeout=timeout_s)
    try:
        return await apply_migrations(conn, sources)
    finally:
        await conn.close()
