"""The embedded ledger's table, its rows, and the upgrades from earlier layouts.

Every column a FinOps query filters, groups or sums on is a column of its own,
and so are the config version and canary arm a request ran on (comparing a
canary's arms is a grouping) and the batch it ran in; the fields no query touches (finish time,
latency, time to first token, error, routing reason, PII counts, trace id,
stream) travel together as one JSON array in ``detail``. Each bound parameter
costs SQLite and the driver work on every insert, and the ledger inserts one
row per request: fifteen parameters instead of twenty-two take about a third
off the cost of writing a row.

The layout is versioned with ``PRAGMA user_version``. A database written by an
earlier release is brought up to this layout in place, in one transaction, the
first time this release opens it: the twenty-column layout (version 0) is
converted, a table without the config version and arm (version 2) gains
them, its rows reading as version 0 outside any canary, and one without the
batch id (version 3) gains it, its rows reading as interactive.
"""

from __future__ import annotations

import sqlite3

import msgspec
from msgspec.structs import astuple

from budgets.ledger_row import LedgerRow

VERSION = 4

COLUMNS = (
    "request_id", "started_us", "tenant", "key_id", "model", "deployment", "provider",
    "prompt_tokens", "completion_tokens", "cached_tokens", "cost", "status", "detail",
    "config_version", "arm", "batch_id",
)  # fmt: skip

_TABLE = """
CREATE TABLE IF NOT EXISTS ledger (
    request_id TEXT NOT NULL,
    started_us INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    deployment TEXT NOT NULL,
    provider TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    status INTEGER NOT NULL,
    -- [finished_us, latency_ms, ttft_ms, error, route_reason, pii_entities, trace_id, stream]
    detail TEXT NOT NULL,
    config_version INTEGER NOT NULL DEFAULT 0,
    arm TEXT,
    batch_id TEXT,
    PRIMARY KEY (request_id, started_us)
);
CREATE INDEX IF NOT EXISTS ledger_tenant_started ON ledger (tenant, started_us);
"""

# Where the detail starts among LedgerRow's fields and the table's columns alike, and
# where it ends among the fields: those after it are columns again.
_DETAIL = COLUMNS.index("detail")
_AFTER_DETAIL = LedgerRow.__struct_fields__.index("config_version")
_Detail = tuple[int, float, float | None, str | None, str | None, dict[str, int], str | None, bool]
_encode = msgspec.json.Encoder().encode
_decode_detail = msgspec.json.Decoder(_Detail).decode

# Columns a version 2 table lacks (its rows ran before config versions and canaries), and a version 3 one (before batches).
_ADDED = {"config_version": "INTEGER NOT NULL DEFAULT 0", "arm": "TEXT", "batch_id": "TEXT"}

# The twenty-column layout's columns, turned into this one's (the added ones take their defaults).
_UPGRADE = f"""
INSERT INTO ledger ({", ".join(COLUMNS[: _DETAIL + 1])})
SELECT request_id, started_us, tenant, key_id, model, deployment, provider,
       prompt_tokens, completion_tokens, cached_tokens, cost, status,
       json_array(finished_us, latency_ms, ttft_ms, error, route_reason, json(pii_entities), trace_id,
                  json(CASE WHEN stream THEN 'true' ELSE 'false' END))
FROM ledger_v0
"""


def prepare(conn: sqlite3.Connection) -> None:
    """Create the table, or bring an earlier layout up to this one (autocommit connection)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == VERSION:
        return
    if version > VERSION:
        raise RuntimeError(f"the ledger database is of a newer layout ({version}) than this release knows ({VERSION})")
    conn.execute("BEGIN IMMEDIATE")
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(ledger)")}
        if "finished_us" in columns:
            conn.execute("ALTER TABLE ledger RENAME TO ledger_v0")
            conn.execute("DROP INDEX IF EXISTS ledger_tenant_started")
        for statement in _TABLE.split(";"):
            if statement.strip():
                conn.execute(statement)
        if "finished_us" in columns:
            conn.execute(_UPGRADE)
            conn.execute("DROP TABLE ledger_v0")
        present = {row[1] for row in conn.execute("PRAGMA table_info(ledger)")}
        for name, kind in _ADDED.items():
            if name not in present:
                conn.execute(f"ALTER TABLE ledger ADD COLUMN {name} {kind}")
        conn.execute(f"PRAGMA user_version = {VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def to_record(row: LedgerRow) -> tuple[object, ...]:
    # row --> sqlite values: its first twelve fields are columns, the next eight the detail, the rest columns
    values = astuple(row)
    return (*values[:_DETAIL], _encode(values[_DETAIL:_AFTER_DETAIL]).decode(), *values[_AFTER_DETAIL:])


def from_record(rec: sqlite3.Row) -> LedgerRow:
    finished_us, latency_ms, ttft_ms, error, route_reason, pii_entities, trace_id, stream = _decode_detail(rec["detail"])
    return LedgerRow(
        request_id=rec["request_id"], tenant=rec["tenant"], key_id=rec["key_id"], model=rec["model"],
        deployment=rec["deployment"], provider=rec["provider"], prompt_tokens=rec["prompt_tokens"],
        completion_tokens=rec["completion_tokens"], cached_tokens=rec["cached_tokens"], cost=rec["cost"],
        latency_ms=latency_ms, ttft_ms=ttft_ms, status=rec["status"], error=error, route_reason=route_reason,
        pii_entities=pii_entities, trace_id=trace_id, stream=stream, started_us=rec["started_us"], finished_us=finished_us,
        config_version=rec["config_version"], arm=rec["arm"], batch_id=rec["batch_id"],
    )  # fmt: skip
