"""One behaviour for both ledgers: embedded SQLite and PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import msgspec
import pytest

from budgets.ledger import BatchingLedger, LedgerOptions
from budgets.ledger_postgres import PostgresLedger
from budgets.ledger_query import GroupBy, UsageQuery, UsageRow, to_epoch_us
from budgets.ledger_row import LedgerRow
from budgets.ledger_sqlite import SQLiteLedger
from budgets.migrate import migrate

ADMIN_DSN = os.environ.get("SLUICEGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
T0 = datetime(2024, 5, 31, 22, 0, tzinfo=timezone.utc)
BIG = 10**15 + 7  # sums of these exceed 2**53: a float anywhere would show


def make_row(n: int, **overrides: object) -> LedgerRow:
    started = overrides.pop("started_at", T0 + timedelta(seconds=n))
    assert isinstance(started, datetime)
    fields: dict[str, object] = {
        "request_id": f"req-{n}",
        "tenant": "tenant-a",
        "key_id": "key-a",
        "model": "gpt-small",
        "deployment": "dep-1",
        "provider": "openai",
        "prompt_tokens": 10 + n,
        "completion_tokens": 5,
        "cached_tokens": 1,
        "cost": BIG + n,
        "latency_ms": 12.5,
        "ttft_ms": None,
        "status": 200,
        "error": None,
        "route_reason": "cheapest",
        "pii_entities": {"EMAIL": 1},
        "trace_id": None,
        "stream": False,
        "config_version": 40 + n % 3,
        "arm": ("candidate", "stable", None)[n % 3],
        "started_us": to_epoch_us(started),
        "finished_us": to_epoch_us(started + timedelta(milliseconds=12)),
    }
    fields.update(overrides)
    return msgspec.convert(fields, LedgerRow)


def database_dsn(name: str) -> str:
    return f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"


@pytest.fixture(scope="session")
async def postgres_dsn() -> AsyncIterator[str | None]:
    """A fresh, migrated database for the session, dropped at the end (None: no server)."""
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        yield None
        return
    name = f"sluicegate_test_{secrets.token_hex(6)}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        await migrate(database_dsn(name))
        yield database_dsn(name)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


LedgerFactory = Callable[..., BatchingLedger]


@pytest.fixture(params=["sqlite", "postgres"])
async def new_ledger(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_dsn: str | None
) -> AsyncIterator[LedgerFactory]:
    """Builds ledgers over one empty store; closes them afterwards."""
    made: list[BatchingLedger] = []
    dsn = postgres_dsn or ""
    if request.param == "postgres":
        if postgres_dsn is None:
            pytest.skip("PostgreSQL not reachable at SLUICEGATE_TEST_POSTGRES_DSN")
        conn = await asyncpg.connect(dsn)
        await conn.execute("TRUNCATE ledger")
        await conn.close()

    def build(spool: str | None = None, **options: object) -> BatchingLedger:
        opts = msgspec.convert(options, LedgerOptions)
        spool = spool or str(tmp_path / f"spool-{len(made)}.jsonl")
        ledger: BatchingLedger
        if request.param == "sqlite":
            ledger = SQLiteLedger(str(tmp_path / "ledger.sqlite"), spool_path=spool, options=opts)
        else:
            ledger = PostgresLedger(dsn, spool, options=opts)
        made.append(ledger)
        return ledger

    yield build
    for ledger in made:
        await ledger.close()


async def started(factory: LedgerFactory, **options: object) -> BatchingLedger:
    ledger = factory(**options)
    await ledger.start()
    return ledger


ALL_TIME = (T0 - timedelta(days=365), T0 + timedelta(days=365))


async def replayed(ledger: BatchingLedger, timeout_s: float = 5.0) -> None:
    """Wait (bounded) for the writer to replay the spool an earlier run left, which it does right after start."""
    deadline = time.monotonic() + timeout_s
    while ledger.spool.pending():
        assert time.monotonic() < deadline, "the spool was not replayed after start"
        await asyncio.sleep(0.01)


async def test_recorded_rows_appear_after_flush(new_ledger: LedgerFactory) -> None:
    ledger = await started(new_ledger, flush_interval_s=60)
    rows = [make_row(1), make_row(2, ttft_ms=3.25, error="upstream_timeout", status=504, stream=True),
            make_row(3, pii_entities={}, trace_id="abc", route_reason=None)]  # fmt: skip
    for row in rows:
        ledger.record(row)
    assert await ledger.rows(None, *ALL_TIME, limit=100) == []
    await ledger.flush()
    assert await ledger.rows(None, *ALL_TIME, limit=100) == rows
    assert await ledger.ping() is True


async def test_background_writer_flushes_without_being_asked(new_ledger: LedgerFactory) -> None:
    ledger = await started(new_ledger, flush_interval_s=0.05)
    ledger.record(make_row(1))
    deadline = time.monotonic() + 5
    while not await ledger.rows(None, *ALL_TIME, limit=10):
        assert time.monotonic() < deadline, "the background writer never wrote the row"
        await asyncio.sleep(0.01)


async def test_duplicates_are_stored_once(new_ledger: LedgerFactory) -> None:
    ledger = await started(new_ledger)
    row = make_row(1)
    ledger.record(row)
    ledger.record(row)  # same batch
    await ledger.flush()
    ledger.record(row)  # a later batch, as a spool replay would send it
    same_id_other_time = make_row(1, started_at=T0 + timedelta(hours=1))
    ledger.record(same_id_other_time)
    await ledger.flush()
    assert await ledger.rows(None, *ALL_TIME, limit=100) == [row, same_id_other_time]


async def test_usage_groups_by_tenant_model_day_with_exact_sums(new_ledger: LedgerFactory) -> None:
    ledger = await started(new_ledger)
    day2 = T0 + timedelta(hours=3)  # past midnight UTC: 2024-06-01
    spec = [("tenant-a", "m1", T0, 200), ("tenant-a", "m1", T0, 500), ("tenant-a", "m2", day2, 200),
            ("tenant-b", "m1", day2, 429), ("tenant-b", "m1", day2, 200)]  # fmt: skip
    for n, (tenant, model, at, status) in enumerate(spec):
        ledger.record(make_row(n, tenant=tenant, model=model, started_at=at + timedelta(seconds=n), status=status))
    await ledger.flush()

    got = await ledger.usage(UsageQuery(start=ALL_TIME[0], end=ALL_TIME[1], group_by=["tenant", "model", "day"]))

    def expect(tenant: str, model: str, day: str, ns: list[int], errors: int) -> UsageRow:
        return UsageRow(group={"tenant": tenant, "model": model, "day": day}, requests=len(ns),
                        prompt_tokens=sum(10 + n for n in ns), completion_tokens=5 * len(ns),
                        cached_tokens=len(ns), cost=sum(BIG + n for n in ns), errors=errors)  # fmt: skip

    assert got == [
        expect("tenant-a", "m1", "2024-05-31", [0, 1], errors=1),
        expect("tenant-a", "m2", "2024-06-01", [2], errors=0),
        expect("tenant-b", "m1", "2024-06-01", [3, 4], errors=1),
    ]
    assert got[0].cost == 2 * 10**15 + 15  # exact: a float sum would round this


async def test_usage_formats_every_group_the_same_way(new_ledger: LedgerFactory) -> None:
    ledger = await started(new_ledger)
    ledger.record(make_row(1, started_at=datetime(2024, 5, 31, 23, 59, 59, 999999, tzinfo=timezone.utc), status=499))
    await ledger.flush()
    names: list[GroupBy] = ["tenant", "model", "deployment", "key", "day", "hour", "provider", "status"]
    [row] = await ledger.usage(UsageQuery(start=ALL_TIME[0], end=ALL_TIME[1], group_by=names))
    assert row.group == {
        "tenant": "tenant-a", "model": "gpt-small", "deployment": "dep-1", "key": "key-a",
        "day": "2024-05-31", "hour": "2024-05-31T23:00:00Z", "provider": "openai", "status": "499",
    }  # fmt: skip
    assert (row.requests, row.errors) == (1, 1)
    [total] = await ledger.usage(UsageQuery(start=ALL_TIME[0], end=ALL_TIME[1]))
    assert total.group == {} and total.cost == BIG + 1


async def test_tenant_filter_scopes_usage_and_rows(new_ledger: LedgerFactory) -> None:
    ledger = await started(new_ledger)
    mine, theirs = make_row(1, tenant="tenant-a"), make_row(2, tenant="tenant-b", cost=999)
    ledger.record(mine)
    ledger.record(theirs)
    await ledger.flush()
    usage = await ledger.usage(UsageQuery(start=ALL_TIME[0], end=ALL_TIME[1], tenant="tenant-b", group_by=["tenant"]))
    assert [(u.group, u.requests, u.cost) for u in usage] == [({"tenant": "tenant-b"}, 1, 999)]
    assert await ledger.rows("tenant-a", *ALL_TIME, limit=10) == [mine]
    assert await ledger.usage(UsageQuery(start=ALL_TIME[0], end=ALL_TIME[1], tenant="nobody")) == []


async def test_time_range_is_half_open(new_ledger: LedgerFactory) -> None:
    ledger = await started(new_ledger)
    start, end = T0, T0 + timedelta(hours=1)
    before = make_row(1, started_at=start - timedelta(microseconds=1))
    at_start = make_row(2, started_at=start)
    last = make_row(3, started_at=end - timedelta(microseconds=1))
    at_end = make_row(4, started_at=end)
    for row in (before, at_start, last, at_end):
        ledger.record(row)
    await ledger.flush()
    assert await ledger.rows(None, start, end, limit=10) == [at_start, last]
    [usage] = await ledger.usage(UsageQuery(start=start, end=end))
    assert usage.requests == 2 and usage.cost == at_start.cost + last.cost
    assert await ledger.rows(None, *ALL_TIME, limit=2) == [before, at_start]


async def test_record_never_blocks_and_flush_persists_everything(new_ledger: LedgerFactory) -> None:
    ledger = await started(new_ledger)
    rows = [make_row(n) for n in range(1000)]
    began = time.perf_counter()
    for row in rows:
        ledger.record(row)
    elapsed = time.perf_counter() - began
    assert elapsed < 0.1, f"1000 record() calls took {elapsed:.3f}s"
    await ledger.flush()
    assert await ledger.rows(None, *ALL_TIME, limit=2000) == rows


async def test_overflowing_buffer_spills_to_spool_and_loses_nothing(new_ledger: LedgerFactory) -> None:
    ledger = await started(new_ledger, batch_size=5, max_pending=10, flush_interval_s=60)
    rows = [make_row(n) for n in range(35)]
    for row in rows:
        ledger.record(row)
    await ledger.flush()
    assert await ledger.rows(None, *ALL_TIME, limit=100) == rows
    assert not ledger.spool.pending()


async def test_a_row_the_store_cannot_hold_is_set_aside_not_retried_forever(new_ledger: LedgerFactory) -> None:
    ledger = await started(new_ledger)
    good = [make_row(n) for n in range(9)]
    poison = make_row(99, prompt_tokens=2**70)  # beyond any 64-bit integer column
    for row in [*good[:4], poison, *good[4:]]:
        ledger.record(row)
    await ledger.flush()
    assert await ledger.rows(None, *ALL_TIME, limit=100) == good
    assert ledger.healthy and not ledger.spool.pending()
    [line] = ledger.spool.rejected_path.read_bytes().splitlines()
    assert msgspec.json.decode(line, type=LedgerRow) == poison


async def test_close_flushes_pending_rows(new_ledger: LedgerFactory) -> None:
    first = await started(new_ledger, flush_interval_s=60)
    first.record(make_row(1))
    await first.close()
    second = await started(new_ledger)
    assert await second.rows(None, *ALL_TIME, limit=10) == [make_row(1)]


async def test_a_row_recorded_after_close_is_kept_for_the_next_start(new_ledger: LedgerFactory) -> None:
    first = await started(new_ledger)
    await first.close()
    first.record(make_row(1))  # a request that finished during shutdown
    assert first.spool.pending()
    second = await started(new_ledger, spool=str(first.spool.path))
    await replayed(second)
    assert await second.rows(None, *ALL_TIME, limit=10) == [make_row(1)]


def test_usage_query_rejects_unknown_group_by() -> None:
    raw = {"start": "2024-05-01T00:00:00Z", "end": "2024-06-01T00:00:00Z", "group_by": ["tenant", "1; DROP TABLE"]}
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(raw, UsageQuery)
    with pytest.raises(ValueError, match="unknown group_by"):
        UsageQuery(start=T0, end=T0, group_by=["cost"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="end must not be before start"):
        UsageQuery(start=T0, end=T0 - timedelta(seconds=1))


async def test_rows_spooled_with_datetime_times_are_replayed(new_ledger: LedgerFactory, tmp_path: Path) -> None:
    """A spool written when rows carried ISO datetimes (an earlier release) still replays, exactly."""
    rows = [make_row(n, started_at=T0 + timedelta(seconds=n, microseconds=123_457)) for n in range(3)]
    spool = tmp_path / "legacy-spool.jsonl"
    lines = []
    for row in rows:
        data = msgspec.to_builtins(row)
        data["started_at"] = row.started_at.isoformat().replace("+00:00", "Z")
        data["finished_at"] = row.finished_at.isoformat()
        del data["started_us"], data["finished_us"]
        lines.append(msgspec.json.encode(data))
    spool.write_bytes(b"\n".join(lines) + b"\n")
    ledger = await started(new_ledger, spool=str(spool))
    await replayed(ledger)
    assert await ledger.rows(None, *ALL_TIME, limit=10) == rows


async def test_rows_spooled_before_config_versions_replay_as_version_0_outside_any_canary(
    new_ledger: LedgerFactory, tmp_path: Path
) -> None:
    """A spool written before rows named their config version and canary arm still replays."""
    rows = [make_row(n, config_version=0, arm=None) for n in range(3)]
    lines = []
    for row in rows:
        data = msgspec.to_builtins(row)
        del data["config_version"], data["arm"]
        lines.append(msgspec.json.encode(data))
    spool = tmp_path / "pre-version-spool.jsonl"
    spool.write_bytes(b"\n".join(lines) + b"\n")
    ledger = await started(new_ledger, spool=str(spool))
    await replayed(ledger)
    assert await ledger.rows(None, *ALL_TIME, limit=10) == rows


def test_grouping_by_key_also_groups_by_tenant() -> None:
    # Two tenants may both hold a key named `k`: a report by key alone would merge them.
    from budgets.ledger_query import UsageQuery

    start, end = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 2, 1, tzinfo=timezone.utc)
    query = UsageQuery(start=start, end=end, group_by=["model", "key"])
    assert query.group_by == ["model", "tenant", "key"]
