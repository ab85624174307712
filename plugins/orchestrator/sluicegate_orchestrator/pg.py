"""PostgreSQL calls for the task store: the gateway's one discipline (``core.pg_calls``) with the orchestrator's migrations.

Each call is one transaction bound to a tenant (row-level security), ending
within ``timeout_s``, connecting included; the pool is made on the first call
(a worker starts while the database is down) and the orchestrator's
migrations are applied then. Trouble with the database is
``TaskStoreUnavailable``; an exception from the caller's own code rolls back
and is raised as it is.
"""

from __future__ import annotations

import logging

from core.pg_calls import PgCalls
from sluicegate_orchestrator.migrate import apply_migrations
from sluicegate_orchestrator.model import TaskStoreUnavailable

log = logging.getLogger("sluicegate.orchestrator")


def _unavailable() -> TaskStoreUnavailable:
    return TaskStoreUnavailable("The task store is unavailable; try again shortly.", retry_after=1)


def task_calls(dsn: str, *, timeout_s: float = 5.0, pool_size: int = 4, auto_migrate: bool = True) -> PgCalls:
    migrate = apply_migrations if auto_migrate else None
    return PgCalls(dsn, unavailable=_unavailable, log=log, migrate=migrate, timeout_s=timeout_s, pool_size=pool_size)
