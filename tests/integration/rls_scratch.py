"""Throwaway PostgreSQL databases for tests: with an ordinary role (row-level security), or for a tenant store.

A superuser bypasses every policy, and the test server's ``postgres`` is one:
the owner (``postgres``) migrates and seeds the scratch database, and the
queries under test run as a fresh LOGIN role without superuser or BYPASSRLS.
Both are dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import pytest

ADMIN_DSN = os.environ.get("SLUICEGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Rls:
    owner_dsn: str  # the superuser that owns and migrated the schema
    role_dsn: str  # an ordinary role: the policies bind it
    a: str
    b: str


def dsn_for(user: str, database: str) -> str:
    server = ADMIN_DSN.rsplit("/", 1)[0].split("@", 1)[1]
    return f"postgresql://{user}@{server}/{database}"


@asynccontextmanager
async def scratch(
    prefix: str, grants: str, prepare: Callable[[str, str, str], Awaitable[None]]
) -> AsyncIterator[Rls]:
    """A database migrated and seeded by ``prepare(owner_dsn, a, b)``, and a role granted ``grants``."""
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        pytest.skip("PostgreSQL is not reachable")
    suffix = secrets.token_hex(5)
    database, role = f"{prefix}_{suffix}", f"{prefix}_role_{suffix}"
    await admin.execute(f"CREATE DATABASE {database}")
    await admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS")
    owner_dsn = dsn_for("postgres", database)
    a, b = f"a-{suffix}", f"b-{suffix}"
    try:
        await prepare(owner_dsn, a, b)
        owner = await asyncpg.connect(owner_dsn)
        try:
            await owner.execute(grants.format(role=role))
        finally:
            await owner.close()
        yield Rls(owner_dsn, dsn_for(role, database), a, b)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


@asynccontextmanager
async def as_role(rls: Rls) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the ordinary role, checked to be bound by the policies."""
    connection = await asyncpg.connect(rls.role_dsn)
    try:
        bypasses = await connection.fetchval("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user")
        assert bypasses is False
        yield connection
    finally:
        await connection.close()


@asynccontextmanager
async def tenant_state(store: str, prefix: str) -> AsyncIterator[dict[str, object]]:
    """Config overrides for a tenant store: ``{}`` for the config file, or a throwaway PostgreSQL database."""
    if store != "postgres":
        yield {}
        return
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        pytest.skip("PostgreSQL is not reachable")
    database = f"{prefix}_{secrets.token_hex(6)}"
    await admin.execute(f"CREATE DATABASE {database}")
    try:
        yield {"state": {"tenants": "postgres", "postgres_dsn": f"{ADMIN_DSN.rsplit('/', 1)[0]}/{database}"}}
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.close()
