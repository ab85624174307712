"""The ledger's PostgreSQL migrations, applied by the one shared runner (core.migrate).

Files in ``budgets/migrations`` are named ``NNNN_description.sql`` and recorded
in ``schema_migrations`` under the namespace ``ledger``; the runner holds an
advisory lock so that several replicas may start at once.

Usage: ``python -m budgets.migrate postgresql://user@host/db`` (or
``sluicegate db migrate --config FILE`` for every namespace at once).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import asyncpg

from core import migrate as runner

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
MigrationError = runner.MigrationError


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[runner.Migration]:
    return runner.load_migrations([("ledger", directory)])


async def apply_migrations(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply the ledger's missing migrations; returns the versions applied by this call."""
    labels = await runner.apply_migrations(conn, [("ledger", directory)])
    return [int(label.rsplit("/", 1)[1]) for label in labels]


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[int]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await apply_migrations(conn, directory)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Apply the ledger's PostgreSQL migrations.")
    parser.add_argument("dsn")
    args = parser.parse_args(argv)
    applied = asyncio.run(migrate(args.dsn))
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(map(str, applied))}" if applied else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
