"""The embedded ledger's table, its rows, and the upgrades from earlier layouts.

Every column a FinOps query filters, groups or sums on is a column of its own,
and so are the config version and canary arm a request ran on (comparing a
canary's arms is a grouping) and the batch it ran in; the fields no query touches (finish time,
latency, time to first token, error, routing reason, PII counts, trace id,
stream, a response cache's result and entry, and the guardrail that blocked) travel together as one JSON array
in ``detail``; what a cache hit saved is a column of its own, since reports sum it. Each bound parameter
costs SQLite and the driver work on every insert, and the ledger inserts one
row per request: fifteen parameters instead of twenty-two take about a third
off the cost of writing a row.

The layout is versioned with ``PRAGMA user_version``. A database written by an
earlier release is brought up to this layout in place, in one transaction, the
first time this release opens it: the twenty-column layout (version 0) is
converted, a table without the config version and arm (version 2) gains
them, its rows reading as version 0 outside any canary, one without the
batch id (version 3) gains it, its rows reading as interactive, and one
without the cache savings (version 4) gains them, its rows saving nothing,
and one without the hourly and daily rollups (version 5) gains them, computed
from the rows it holds (``budgets.ledger_sqlite_rollup``). A
detail array of eight items (rows without a cache, or of earlier releases)
reads as no cache; one of ten, as no guardrail (the eleventh item names the
guardrail that blocked the request, when one did).
"""

from __future__ import annotations

import sqlite3

import msgspec
from msgspec.structs import astuple

from budgets.ledger_row import LedgerRow
from budgets.ledger_sqlite_rollup import create_rollup

VERSION = 6

COLUMNS = (
    "request_id", "started_us", "tenant", "key_id", "model", "deployment", "provider",
    "prompt_tokens", "completion_tokens", "cached_tokens", "cost", "status", "detail",
    "config_version", "arm", "batch_id", "saved",
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
    -- [finished_us, latency_ms, ttft_ms, error, route_reason, pii_entities, trace_id, stream(, cache, cache_entry(, guardrail))]
    detail TEXT NOT NULL,
    config_version INTEGER NOT NULL DEFAULT 0,
    arm TEXT,
    batch_id TEXT,
    saved INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, started_us)
);
CREATE INDEX IF NOT EXISTS ledger_tenant_started ON ledger (tenant, started_us);
"""

# Where the detail starts among LedgerRow's fields and the table's columns alike, and
# where it ends among the fields: those after it are columns again (config version, arm, batch id, saved).
_DETAIL = COLUMNS.index("detail")
_AFTER_DETAIL = LedgerRow.__struct_fields__.index("config_version")


class _Detail(msgspec.Struct, array_like=True):
    """The detail array; the cache fields are written only for a request of an alias with a cache or one a guardrail blocked."""

    finished_us: int
    latency_ms: float
    ttft_ms: float | None
    error: str | None
    route_reason: str | None
    pii_entities: dict[str, int]
    trace_id: str | None
    stream: bool
    cache: str | None = None
    cache_entry: str | None = None
    guardrail: str | None = None


_encode = msgspec.json.Encoder().encode
_decode_detail = msgspec.json.Decoder(_Detail).decode

# Columns a version 2 table lacks (its rows ran before config versions and canaries), and a version 3 one (before batches).
_ADDED = {"config_version": "INTEGER NOT NULL DEFAULT 0", "arm": "TEXT", "batch_id": "TEXT", "saved": "INTEGER NOT NULL DEFAULT 0"}

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
        create_rollup(conn)
        conn.execute(f"PRAGMA user_version = {VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def to_record(row: LedgerRow) -> tuple[object, ...]:
    # row --> sqlite values: its first twelve fields are columns, the next eight the detail (and the
    # cache's result and entry, when there is a cache), then config version, arm, batch id and saved
    values = astuple(row)
    detail = values[_DETAIL:_AFTER_DETAIL]
    if row.guardrail is not None:
        detail = (*detail, row.cache, row.cache_entry, row.guardrail)
    elif row.cache is not None:
        detail = (*detail, row.cache, row.cache_entry)
    return (*values[:_DETAIL], _encode(detail).decode(), row.config_version, row.arm, row.batch_id, row.saved)


def from_record(rec: sqlite3.Row) -> LedgerRow:
    d = _decode_detail(rec["detail"])
    return LedgerRow(
        request_id=rec["request_id"], tenant=rec["tenant"], key_id=rec["key_id"], model=rec["model"],
        deployment=rec["deployment"], provider=rec["provider"], prompt_tokens=rec["prompt_tokens"],
        completion_tokens=rec["completion_tokens"], cached_tokens=rec["cached_tokens"], cost=rec["cost"],
        latency_ms=d.latency_ms, ttft_ms=d.ttft_ms, status=rec["status"], error=d.error, route_reason=d.route_reason,
        pii_entities=d.pii_entities, trace_id=d.trace_id, stream=d.stream, started_us=rec["started_us"], finished_us=d.finished_us,
        config_version=rec["config_version"], arm=rec["arm"], batch_id=rec["batch_id"],
        cache=d.cache, cache_entry=d.cache_entry, saved=rec["saved"], guardrail=d.guardrail,
    )  # fmt: skip
