"""Row-level security: which tenant's rows a PostgreSQL transaction may see.

Every tenant-scoped table carries a policy that shows (and accepts) a row only
when its tenant column equals the transaction's ``sluicegate.tenant`` setting,
or when that setting is ``ALL``. Unset, the setting is empty and every such
table looks empty: a query that forgets to say whose data it wants finds
nothing. The tables are ``FORCE ROW LEVEL SECURITY`` so that the owner is bound
too; only a superuser bypasses it, so production connects as an ordinary role.

The setting is transaction-local: it must be made inside ``conn.transaction()``
and it vanishes at commit, so a pooled connection never carries it to the next
user.
"""

from __future__ import annotations

from typing import Protocol

SETTING = "sluicegate.tenant"
# Operators' queries, authentication by key hash, the ledger writer's batches.
ALL = "*"

_SET = f"SELECT set_config('{SETTING}', $1, true)"


class _Executes(Protocol):
    async def execute(self, query: str, *args: object) -> str: ...


async def scope(conn: _Executes, tenant: str | None) -> None:
    """Bind the current transaction to one tenant's rows (``None``: every tenant's)."""
    await conn.execute(_SET, ALL if tenant is None else tenant)


def policy_sql(table: str, column: str) -> str:
    """DDL that puts ``table`` under the tenant policy on ``column`` (for migrations)."""
    check = f"current_setting('{SETTING}', true) IN ('{ALL}', {column})"
    return (
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;\n"
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY;\n"
        f"CREATE POLICY tenant_isolation ON {table} USING ({check}) WITH CHECK ({check});\n"
    )
