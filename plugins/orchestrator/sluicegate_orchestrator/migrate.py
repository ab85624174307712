"""The orchestrator's PostgreSQL migrations, applied by the gateway's one runner (``core.migrate``).

Files in ``migrations/`` are recorded in ``schema_migrations`` under the
namespace ``orchestrator`` and numbered from 1001, as every namespace but the
ledger's is. ``SOURCE`` is what a later ``sluicegate db migrate`` lists beside
the gateway's own sources.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from core import migrate as runner

SOURCE: runner.Source = ("orchestrator", Path(__file__).with_name("migrations"))


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply the orchestrator's missing migrations; returns the labels applied by this call."""
    applied: list[str] = await runner.apply_migrations(conn, [SOURCE])
    return applied
