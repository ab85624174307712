"""The embedded ledger opens a database written in an earlier layout and keeps every row.

Three earlier layouts: twenty columns (version 0), the detail document without
the config version and canary arm (version 2), and without the batch id (version 3).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec

from budgets.ledger_query import UsageQuery, to_epoch_us
from budgets.ledger_row import LedgerRow
from budgets.ledger_sqlite import SQLiteLedger
from budgets.ledger_sqlite_schema import COLUMNS, VERSION

_EARLIER = """
CREATE TABLE ledger (
    request_id TEXT NOT NULL, started_us INTEGER NOT NULL, finished_us INTEGER NOT NULL, tenant TEXT NOT NULL,
    key_id TEXT NOT NULL, model TEXT NOT NULL, deployment TEXT NOT NULL, provider TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL,
    cost INTEGER NOT NULL, latency_ms REAL NOT NULL, ttft_ms REAL, status INTEGER NOT NULL, error TEXT,
    route_reason TEXT, pii_entities TEXT NOT NULL, trace_id TEXT, stream INTEGER NOT NULL,
    PRIMARY KEY (request_id, started_us)
);
CREATE INDEX ledger_tenant_started ON ledger (tenant, started_us);
"""
T0 = datetime(2026, 11, 30, 23, 0, tzinfo=timezone.utc)
BIG = 2**62 + 11  # a double would round it


def _earlier_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(_EARLIER)
    start = to_epoch_us(T0)
    conn.executemany(
        "INSERT INTO ledger VALUES (" + ", ".join("?" * 20) + ")",
        [
            ("r1", start, start + 1500, "acme", "k1", "gpt", "dep", "openai", 10, 5, 2, BIG, 1.5, 0.25, 200, None, "cheapest",
             '{"EMAIL_ADDRESS":2}', "ab" * 16, 1),
            ("r2", start + 10, start + 20, "acme", "k1", "gpt", "dep", "openai", 1, 0, 0, 7, 0.01, None, 499, "client_closed", None,
             "{}", None, 0),
        ],
    )  # fmt: skip
    conn.commit()
    conn.close()


async def test_an_earlier_layout_is_converted_in_place_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _earlier_database(path)
    ledger = SQLiteLedger(str(path))
    await ledger.start()
    try:
        rows = await ledger.rows(None, T0 - timedelta(days=1), T0 + timedelta(days=1), limit=10)
        assert [(r.request_id, r.cost, r.status, r.stream) for r in rows] == [("r1", BIG, 200, True), ("r2", 7, 499, False)]
        first, second = rows
        assert (first.finished_us - first.started_us, first.latency_ms, first.ttft_ms) == (1500, 1.5, 0.25)
        assert (first.pii_entities, first.trace_id, first.route_reason) == ({"EMAIL_ADDRESS": 2}, "ab" * 16, "cheapest")
        assert (second.error, second.ttft_ms, second.pii_entities) == ("client_closed", None, {})
        assert {(r.config_version, r.arm) for r in rows} == {(0, None)}
        [usage] = await ledger.usage(UsageQuery(start=T0, end=T0 + timedelta(hours=1), group_by=["tenant"]))
        assert (usage.requests, usage.cost, usage.errors) == (2, BIG + 7, 1)
    finally:
        await ledger.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == VERSION
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'ledger_v0'").fetchall() == []
    conn.close()


async def test_opening_twice_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    for _ in range(2):
        ledger = SQLiteLedger(str(path))
        await ledger.start()
        await ledger.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == VERSION
    columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(ledger)"))
    assert columns == COLUMNS
    conn.close()


def test_a_rows_fields_are_the_tables_columns_in_order_with_the_detail_between() -> None:
    # Rows are written as their first fields, the next eight as one detail document, the rest as columns
    # but for the cache's result and entry and the blocking guardrail, which end the detail document when there are any.
    fields = LedgerRow.__struct_fields__
    detail = COLUMNS.index("detail")
    assert fields[:detail] == COLUMNS[:detail]
    assert fields[detail : detail + 8] == (
        "finished_us", "latency_ms", "ttft_ms", "error", "route_reason", "pii_entities", "trace_id", "stream",
    )  # fmt: skip
    assert fields[detail + 8 :] == ("config_version", "arm", "batch_id", "cache", "cache_entry", "saved", "guardrail")
    assert COLUMNS[detail + 1 :] == ("config_version", "arm", "batch_id", "saved")


_VERSION_2 = """
CREATE TABLE ledger (
    request_id TEXT NOT NULL, started_us INTEGER NOT NULL, tenant TEXT NOT NULL, key_id TEXT NOT NULL,
    model TEXT NOT NULL, deployment TEXT NOT NULL, provider TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, cost INTEGER NOT NULL,
    status INTEGER NOT NULL, detail TEXT NOT NULL,
    PRIMARY KEY (request_id, started_us)
);
CREATE INDEX ledger_tenant_started ON ledger (tenant, started_us);
PRAGMA user_version = 2;
"""


async def test_a_table_without_config_version_and_arm_gains_them_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    start = to_epoch_us(T0)
    conn = sqlite3.connect(path)
    conn.executescript(_VERSION_2)
    detail = f'[{start + 900},0.9,null,null,"cheapest",{{"PERSON":1}},null,true]'
    conn.execute("INSERT INTO ledger VALUES (" + ", ".join("?" * 13) + ")",
                 ("old", start, "acme", "k1", "gpt", "dep", "openai", 3, 4, 0, BIG, 200, detail))  # fmt: skip
    conn.commit()
    conn.close()
    ledger = SQLiteLedger(str(path))
    await ledger.start()
    try:
        new = LedgerRow("new", start + 5, "acme", "k1", "gpt", "dep", "openai", 1, 2, 0, 9, 200,
                        start + 50, 0.05, None, None, None, {}, None, False, 17, "shadow")  # fmt: skip
        ledger.record(new)
        await ledger.flush()
        old, got = await ledger.rows(None, T0 - timedelta(days=1), T0 + timedelta(days=1), limit=10)
    finally:
        await ledger.close()
    assert (old.request_id, old.cost, old.stream, old.pii_entities, old.finished_us) == ("old", BIG, True, {"PERSON": 1}, start + 900)
    assert (old.config_version, old.arm) == (0, None)
    assert got == new
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == VERSION
    assert tuple(row[1] for row in conn.execute("PRAGMA table_info(ledger)")) == COLUMNS
    conn.close()


async def test_a_table_without_batch_id_gains_it_and_its_rows_read_as_interactive(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    start = to_epoch_us(T0)
    conn = sqlite3.connect(path)
    conn.executescript(
        _VERSION_2.replace(
            "status INTEGER NOT NULL, detail TEXT NOT NULL,",
            "status INTEGER NOT NULL, detail TEXT NOT NULL,"
            " config_version INTEGER NOT NULL DEFAULT 0, arm TEXT,",
        ).replace("user_version = 2", "user_version = 3")
    )
    detail = f'[{start + 900},0.9,null,null,null,{{}},null,false]'
    conn.execute("INSERT INTO ledger VALUES (" + ", ".join("?" * 15) + ")",
                 ("old", start, "acme", "k1", "gpt", "dep", "openai", 3, 4, 0, BIG, 200, detail, 4, "stable"))  # fmt: skip
    conn.commit()
    conn.close()
    ledger = SQLiteLedger(str(path))
    await ledger.start()
    try:
        new = LedgerRow("new", start + 5, "acme", "k1", "gpt", "dep", "openai", 1, 2, 0, 9, 200,
                        start + 50, 0.05, None, None, None, {}, None, False, 17, None, "batch_abc")  # fmt: skip
        ledger.record(new)
        await ledger.flush()
        old, got = await ledger.rows(None, T0 - timedelta(days=1), T0 + timedelta(days=1), limit=10)
    finally:
        await ledger.close()
    assert (old.request_id, old.cost, old.config_version, old.arm, old.batch_id) == ("old", BIG, 4, "stable", None)
    assert got == new
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == VERSION
    assert tuple(row[1] for row in conn.execute("PRAGMA table_info(ledger)")) == COLUMNS
    conn.close()


async def test_a_table_without_cache_savings_gains_them_and_cache_fields_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    start = to_epoch_us(T0)
    conn = sqlite3.connect(path)
    conn.executescript(
        _VERSION_2.replace(
            "status INTEGER NOT NULL, detail TEXT NOT NULL,",
            "status INTEGER NOT NULL, detail TEXT NOT NULL, config_version INTEGER NOT NULL DEFAULT 0, arm TEXT, batch_id TEXT,",
        ).replace("user_version = 2", "user_version = 4")
    )
    detail = f"[{start + 900},0.9,null,null,null,{{}},null,false]"
    conn.execute("INSERT INTO ledger VALUES (" + ", ".join("?" * 16) + ")",
                 ("old", start, "acme", "k1", "gpt", "dep", "openai", 3, 4, 0, BIG, 200, detail, 4, None, None))  # fmt: skip
    conn.commit()
    conn.close()
    ledger = SQLiteLedger(str(path))
    await ledger.start()
    try:
        hit = LedgerRow("hit", start + 5, "acme", "k1", "gpt", "dep", "openai", 1, 2, 0, 0, 200,
                        start + 50, 0.05, None, None, None, {}, None, False, 17, None, None, "hit", "0123456789abcdef", BIG)  # fmt: skip
        miss = msgspec.structs.replace(hit, request_id="miss", started_us=start + 6, cache="miss", saved=0, cost=9)
        ledger.record(hit)
        ledger.record(miss)
        await ledger.flush()
        old, got_hit, got_miss = await ledger.rows(None, T0 - timedelta(days=1), T0 + timedelta(days=1), limit=10)
        [usage] = await ledger.usage(UsageQuery(start=T0, end=T0 + timedelta(hours=1), group_by=["tenant", "model"]))
    finally:
        await ledger.close()
    assert (old.cache, old.cache_entry, old.saved) == (None, None, 0)
    assert (got_hit, got_miss) == (hit, miss)
    assert (usage.requests, usage.cache_hits, usage.saved, usage.cost) == (3, 1, BIG, BIG + 9)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == VERSION
    assert tuple(row[1] for row in conn.execute("PRAGMA table_info(ledger)")) == COLUMNS
    conn.close()


async def test_a_row_without_arm_or_batch_stores_null_and_one_with_them_stores_them(tmp_path: Path) -> None:
    # What the table holds for a row without them is SQL NULL, as SQL reads it, and the values for one with them.
    path = tmp_path / "ledger.sqlite"
    start = to_epoch_us(T0)
    plain = LedgerRow("plain", start, "acme", "k1", "gpt", "dep", "openai", 1, 2, 0, 9, 200,
                      start + 50, 0.05, None, None, None, {}, None, False, 3, None)  # fmt: skip
    canary = msgspec.structs.replace(plain, request_id="canary", arm="candidate", batch_id="batch_7")
    ledger = SQLiteLedger(str(path))
    await ledger.start()
    try:
        ledger.record(plain)
        ledger.record(canary)
        await ledger.flush()
        got = await ledger.rows(None, T0 - timedelta(days=1), T0 + timedelta(days=1), limit=10)
    finally:
        await ledger.close()
    assert sorted(got, key=lambda r: r.request_id) == [canary, plain]
    conn = sqlite3.connect(path)
    stored = conn.execute("SELECT request_id, arm IS NULL, batch_id IS NULL, arm, batch_id FROM ledger ORDER BY request_id").fetchall()
    conn.close()
    assert stored == [("canary", 0, 0, "candidate", "batch_7"), ("plain", 1, 1, None, None)]
