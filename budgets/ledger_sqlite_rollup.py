"""The embedded ledger's rollup tables: their layout, their backfill, and the batch upsert.

``ledger_hourly`` holds one row per (hour, tenant, model, deployment,
provider, status) with the sums a usage report needs (``budgets.ledger_rollup``);
``ledger_daily`` the same per UTC day. The writer upserts a batch's sums into
both in the transaction that inserts its rows, counting only the rows the
insert added; a row deleted from the ledger is subtracted by a trigger
(deletes are rare: the ledger is append-only), so the sums stay equal to the
rows'. Layout 6 adds the tables and fills them from the rows already there
(``create_rollup``, inside the upgrade's transaction).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from budgets.ledger_rollup import DAY_US, HOUR_US, KEY_COLUMNS, SUM_COLUMNS, HourlySums

# Each rollup table and its bucket: the column naming it, and its length in microseconds.
TABLES = (("ledger_hourly", "hour_us", HOUR_US), ("ledger_daily", "day_us", DAY_US))


def _create(table: str, bucket: str) -> str:
    key = (bucket, *KEY_COLUMNS)
    return f"""
CREATE TABLE IF NOT EXISTS {table} (
    {bucket} INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    deployment TEXT NOT NULL,
    provider TEXT NOT NULL,
    status INTEGER NOT NULL,
    {", ".join(f"{name} INTEGER NOT NULL" for name in SUM_COLUMNS)},
    PRIMARY KEY ({", ".join(key)})
) WITHOUT ROWID
"""


def _floor(column: str, length: int) -> str:
    # SQLite's % truncates toward zero: this floors, as hour_floor() and day_floor() do.
    return f"({column} - (({column} % {length}) + {length}) % {length})"


# The cache's result is the detail array's ninth item (budgets.ledger_sqlite_schema).
_HIT = "json_extract({detail}, '$[8]') = 'hit'"


def _backfill(table: str, bucket: str, length: int) -> str:
    return f"""
INSERT INTO {table} ({", ".join((bucket, *KEY_COLUMNS, *SUM_COLUMNS))})
SELECT {_floor("started_us", length)}, {", ".join(KEY_COLUMNS)},
       count(*), count(*) FILTER (WHERE status >= 400), sum(prompt_tokens), sum(completion_tokens),
       sum(cached_tokens), sum(cost), count(*) FILTER (WHERE {_HIT.format(detail="detail")}), sum(saved)
FROM ledger GROUP BY 1, 2, 3, 4, 5, 6
"""


def _subtract_old(table: str, bucket: str, length: int) -> str:
    """Statements of the delete trigger's body for one table: the deleted row's sums are taken off its key."""
    key = " AND ".join([f"{bucket} = {_floor('old.started_us', length)}", *(f"{name} = old.{name}" for name in KEY_COLUMNS)])
    return f"""
    UPDATE {table} SET requests = requests - 1, errors = errors - (old.status >= 400),
        prompt_tokens = prompt_tokens - old.prompt_tokens, completion_tokens = completion_tokens - old.completion_tokens,
        cached_tokens = cached_tokens - old.cached_tokens, cost = cost - old.cost,
        cache_hits = cache_hits - coalesce({_HIT.format(detail="old.detail")}, 0), saved = saved - old.saved
    WHERE {key};
    DELETE FROM {table} WHERE {key} AND requests = 0;"""


_ON_DELETE = "CREATE TRIGGER IF NOT EXISTS ledger_rollup_delete AFTER DELETE ON ledger BEGIN{}\nEND".format(
    "".join(_subtract_old(*table) for table in TABLES)
)


def _upsert(table: str, bucket: str) -> str:
    names = (bucket, *KEY_COLUMNS, *SUM_COLUMNS)
    conflict = ", ".join((bucket, *KEY_COLUMNS))
    return (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)}) ON CONFLICT ({conflict}) DO UPDATE SET "
        + ", ".join(f"{name} = {name} + excluded.{name}" for name in SUM_COLUMNS)
    )


_UPSERT_HOURLY = _upsert("ledger_hourly", "hour_us")
_UPSERT_DAILY = _upsert("ledger_daily", "day_us")


def create_rollup(conn: sqlite3.Connection) -> None:
    """Create the rollups and their trigger, and (re)compute them from every ledger row; inside the caller's transaction."""
    for table, bucket, length in TABLES:
        conn.execute(_create(table, bucket))
        conn.execute(f"DELETE FROM {table}")
        conn.execute(_backfill(table, bucket, length))
    conn.execute(_ON_DELETE)


def upsert_parts(sums: HourlySums, step: int) -> Iterator[tuple[str, list[tuple[object, ...]]]]:
    """The statements that add a batch's sums to the rollups (inside the transaction that inserted its rows),
    in parts of at most ``step`` keys, for a writer that pauses between them."""
    for sql, records in ((_UPSERT_HOURLY, list(sums.records())), (_UPSERT_DAILY, list(sums.daily_records()))):
        for i in range(0, len(records), step):
            yield sql, records[i : i + step]
