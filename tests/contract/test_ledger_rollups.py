"""The rollups equal the raw rows, exactly, on both ledgers (layout 6 for SQLite, migration ledger/0010 for PostgreSQL).

Random rows (hours' edges, huge costs, cache hits, errors) go through the
ledger's own paths: batches, duplicates within and across batches, and a
spool replayed by the next start, some of whose rows were already written.
Then the rollup tables hold, per key, the sums of the rows the ledger kept,
and every usage report the rollups can answer gives what the raw rows give.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgets.ledger import BatchingLedger, LedgerOptions
from budgets.ledger_postgres import PostgresLedger
from budgets.ledger_query import GroupBy, UsageQuery, to_epoch_us
from budgets.ledger_rollup import HOUR_US, HourlySums, hour_floor
from budgets.ledger_row import LedgerRow
from budgets.ledger_spool import Spool
from budgets.ledger_sqlite import SQLiteLedger
from budgets.ledger_usage import reads_rollup
from tests.contract.test_ledger import ALL_TIME, BIG, T0, make_row, postgres_dsn, replayed

__all__ = ["postgres_dsn"]  # fixture

_OPTIONS = LedgerOptions(flush_interval_s=60)
_GROUPINGS: list[list[GroupBy]] = [
    [], ["day"], ["hour"], ["tenant", "model"], ["tenant", "model", "deployment", "provider", "status"],
    ["deployment", "day"], ["status", "hour"],
]  # fmt: skip
_examples = itertools.count()


class Stores:
    """Fresh ledgers over one store per example: a new SQLite file, or an emptied PostgreSQL ledger."""

    def __init__(self, kind: str, tmp_path: Path, dsn: str | None) -> None:
        self.kind, self.tmp_path, self.dsn = kind, tmp_path, dsn
        self.path = ""

    async def reset(self) -> None:
        self.path = str(self.tmp_path / f"ledger-{next(_examples)}.sqlite")
        if self.kind == "postgres":
            assert self.dsn is not None
            conn = await asyncpg.connect(self.dsn)
            try:
                await conn.execute("TRUNCATE ledger")  # and, by its trigger, the rollup
            finally:
                await conn.close()

    async def ledger(self, spool: str) -> BatchingLedger:
        ledger: BatchingLedger
        if self.kind == "sqlite":
            ledger = SQLiteLedger(self.path, spool_path=spool, options=_OPTIONS)
        else:
            assert self.dsn is not None
            ledger = PostgresLedger(self.dsn, spool, options=_OPTIONS)
        await ledger.start()
        return ledger

    async def rollup(self, table: str = "ledger_hourly") -> list[tuple[object, ...]]:
        """A rollup table's rows as ``(bucket_us, *key, *sums)``, in key order."""
        sql = f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4, 5, 6"
        if self.kind == "sqlite":
            with sqlite3.connect(self.path) as conn:
                return [tuple(r) for r in conn.execute(sql)]
        conn = await asyncpg.connect(self.dsn)
        try:
            records = await conn.fetch(sql)
        finally:
            await conn.close()
        return [(to_epoch_us(r[0]), *r[1:]) for r in records]

    async def assert_rollups_hold(self, rows: list[LedgerRow]) -> None:
        """Both rollups hold exactly the sums of ``rows``."""
        sums = HourlySums()
        for row in rows:
            sums.add(row)
        assert await self.rollup() == sorted(sums.records())
        assert await self.rollup("ledger_daily") == sorted(sums.daily_records())


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path, postgres_dsn: str | None) -> Stores:
    if request.param == "postgres" and postgres_dsn is None:
        pytest.skip("PostgreSQL not reachable at SLUICEGATE_TEST_POSTGRES_DSN")
    return Stores(request.param, tmp_path, postgres_dsn)


# Times near T0's hours, their edges above all: a microsecond either side of a boundary.
# (Hypothesis favours small integers: the hour is drawn on its own so that every hour gets rows.)
_offsets = st.one_of(
    st.builds(lambda h, us: h * HOUR_US + us, st.sampled_from(range(5)), st.integers(0, HOUR_US - 1)),
    st.builds(lambda h, d: h * HOUR_US + d, st.integers(1, 4), st.sampled_from([-1, 0, 1])),
)
_cuts = st.builds(lambda h, us: h * HOUR_US + us, st.sampled_from(range(3)), st.integers(1, HOUR_US - 1))


@st.composite
def ledger_rows(draw: st.DrawFn) -> LedgerRow:
    hit = draw(st.sampled_from([None, "hit", "miss"]))
    return make_row(
        0,
        request_id=f"req-{draw(st.integers(0, 40))}",  # collisions: duplicates, and same id at another time
        started_at=T0 + timedelta(microseconds=draw(_offsets)),
        tenant=draw(st.sampled_from(["tenant-a", "tenant-b", "tenant-c"])),
        model=draw(st.sampled_from(["m1", "m2"])),
        deployment=draw(st.sampled_from(["dep-1", "dep-2"])),
        provider=draw(st.sampled_from(["openai", "vllm"])),
        status=draw(st.sampled_from([200, 200, 400, 429, 499, 500])),
        prompt_tokens=draw(st.integers(0, 10**9)),
        cost=draw(st.integers(0, BIG)),
        cache=hit,
        saved=draw(st.integers(0, BIG)) if hit == "hit" else 0,
    )


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[LedgerRow], list[list[LedgerRow]], list[LedgerRow]]:
    """Rows spooled before the first start, batches written, and rows spooled for the next start."""
    rows = ledger_rows()
    spooled = draw(st.lists(rows, max_size=12))
    batches = draw(st.lists(st.lists(rows, max_size=25), max_size=4))
    written = spooled + [row for batch in batches for row in batch]
    again = draw(st.lists(st.sampled_from(written), max_size=10)) if written else []  # replayed a second time
    return spooled, batches, again + draw(st.lists(rows, max_size=5))


async def _write(stores: Stores, history: tuple[list[LedgerRow], list[list[LedgerRow]], list[LedgerRow]]) -> None:
    spooled, batches, later = history
    spool = str(stores.tmp_path / f"spool-{next(_examples)}.jsonl")
    if spooled:
        Spool(spool).append(spooled)
    ledger = await stores.ledger(spool)
    try:
        await replayed(ledger)
        for batch in batches:
            for row in batch:
                ledger.record(row)
            await ledger.flush()
    finally:
        await ledger.close()
    if later:
        Spool(spool).append(later)
    ledger = await stores.ledger(spool)
    try:
        await replayed(ledger)
    finally:
        await ledger.close()


def _queries(cut: int, tenant: str | None) -> list[UsageQuery]:
    """Whole hours, ranges cut inside hours (``cut`` microseconds in), one hour, and one within an hour."""
    ranges = [
        (T0 - timedelta(hours=1), T0 + timedelta(hours=6)),
        (T0 + timedelta(microseconds=cut), T0 + timedelta(hours=4, microseconds=cut)),
        (T0 + timedelta(hours=1), T0 + timedelta(hours=2)),
        (T0 + timedelta(microseconds=cut % HOUR_US), T0 + timedelta(microseconds=cut % HOUR_US + 1)),
        # days, the hours before or after them, and edges
        (T0 + timedelta(microseconds=cut), T0 + timedelta(days=2, microseconds=-cut)),
        (T0 - timedelta(days=2, microseconds=cut), T0 + timedelta(hours=2, microseconds=cut)),
        ALL_TIME,
    ]
    return [UsageQuery(start=a, end=b, tenant=tenant, group_by=list(g)) for a, b in ranges for g in _GROUPINGS]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    history=histories(),
    cut=_cuts,
    tenant=st.sampled_from([None, "tenant-a"]),
)
async def test_rollup_sums_equal_the_rows_and_reports_match_the_raw_query(
    stores: Stores, history: tuple[list[LedgerRow], list[list[LedgerRow]], list[LedgerRow]], cut: int, tenant: str | None
) -> None:
    await stores.reset()
    await _write(stores, history)
    ledger = await stores.ledger(str(stores.tmp_path / "unused.jsonl"))
    try:
        kept = await ledger.rows(None, *ALL_TIME, limit=10_000)
        await stores.assert_rollups_hold(kept)
        for query in _queries(cut, tenant):
            assert await ledger.usage(query) == await ledger.usage(query, "raw"), query
    finally:
        await ledger.close()


def test_reports_the_rollup_can_answer_read_it() -> None:
    whole = (T0, T0 + timedelta(days=30))
    assert reads_rollup(UsageQuery(start=whole[0], end=whole[1], group_by=["tenant", "model", "day"]))
    assert reads_rollup(UsageQuery(start=whole[0] + timedelta(seconds=1), end=whole[1], tenant="t", group_by=["hour"]))
    assert not reads_rollup(UsageQuery(start=whole[0], end=whole[1], group_by=["key"]))
    assert not reads_rollup(UsageQuery(start=T0 + timedelta(minutes=1), end=T0 + timedelta(minutes=59)))
    assert not reads_rollup(UsageQuery(start=T0 + timedelta(minutes=1), end=T0 + timedelta(hours=1, minutes=1)))


async def test_a_report_grouped_by_key_reads_the_rows_and_agrees(stores: Stores) -> None:
    await stores.reset()
    rows = [make_row(n, key_id=f"key-{n % 2}", started_at=T0 + timedelta(minutes=25 * n)) for n in range(8)]
    ledger = await stores.ledger(str(stores.tmp_path / "spool.jsonl"))
    try:
        for row in rows:
            ledger.record(row)
        await ledger.flush()
        query = UsageQuery(start=T0, end=T0 + timedelta(hours=4), group_by=["key", "day"])
        assert not reads_rollup(query)
        got = await ledger.usage(query)
        assert [(u.group["key"], u.group["day"], u.requests) for u in got] == [
            ("key-0", "2024-05-31", 3), ("key-0", "2024-06-01", 1), ("key-1", "2024-05-31", 2), ("key-1", "2024-06-01", 2),
        ]  # fmt: skip
        assert got == await ledger.usage(query, "raw")
    finally:
        await ledger.close()


async def test_concurrent_writers_with_overlapping_rows_count_each_row_once(stores: Stores) -> None:
    """Several ledgers on one store write overlapping batches at once, as replicas replaying one spool would."""
    await stores.reset()
    rows = [make_row(n, tenant=f"tenant-{n % 3}", started_at=T0 + timedelta(minutes=7 * n)) for n in range(300)]
    ledgers = [await stores.ledger(str(stores.tmp_path / f"spool-c{i}.jsonl")) for i in range(4)]
    try:

        async def write(i: int) -> None:
            share = rows[i * 50 : i * 50 + 150]  # each overlaps its neighbours
            for start in range(0, len(share), 30):
                for row in share[start : start + 30]:
                    ledgers[i].record(row)
                await ledgers[i].flush()

        await asyncio.gather(*(write(i) for i in range(4)))
        assert all(ledger.healthy and not ledger.spool.pending() for ledger in ledgers)
        kept = await ledgers[0].rows(None, *ALL_TIME, limit=1_000)
        assert len(kept) == len(rows)
        await stores.assert_rollups_hold(kept)
    finally:
        for ledger in ledgers:
            await ledger.close()


def test_hour_buckets_floor_on_the_utc_hour() -> None:
    at = datetime(2024, 5, 31, 22, 59, 59, 999_999, tzinfo=timezone.utc)
    assert hour_floor(to_epoch_us(at)) == to_epoch_us(datetime(2024, 5, 31, 22, tzinfo=timezone.utc))
    assert hour_floor(to_epoch_us(at) + 1) == to_epoch_us(at) + 1
