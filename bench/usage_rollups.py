"""How fast usage reports are read from the rollups, against the raw rows, on a large ledger.

``python -m bench.usage_rollups [--rows 1000000] [--store sqlite|postgres] [--dsn postgresql://postgres@127.0.0.1:5432/test]``

Fills a fresh ledger (a temporary SQLite file, or a throwaway PostgreSQL
database dropped afterwards) with ``--rows`` synthetic rows over 30 days,
through the store's own batch path, oldest first, so the rollups are kept as
the gateway keeps them, and prints the fill rate. Then times each report
(median of ``--repeat`` runs) read as served (the daily and hourly rollups,
with raw rows at a range's partial hours) and from the raw rows, checks that
both give the same result, and prints both times. The rows: 50 tenants of very different sizes, 10
aliases on 2 deployments each, 94% successes, 10% cache hits.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg

from budgets.ledger_postgres import PostgresStore
from budgets.ledger_query import GroupBy, UsageQuery, to_epoch_us
from budgets.ledger_row import LedgerRow, LedgerStore
from budgets.ledger_sqlite import SQLiteStore
from budgets.ledger_usage import reads_rollup

CHUNK = 5_000
END = datetime(2026, 11, 1, tzinfo=timezone.utc)
DAYS = 30
_TENANTS = [f"tenant-{i:02d}" for i in range(50)]
_WEIGHTS = [1 / (i + 1) for i in range(len(_TENANTS))]  # a few large tenants, many small ones
_ALIASES = [f"model-{i}" for i in range(10)]
_STATUSES, _STATUS_WEIGHTS = [200, 429, 499, 500], [94, 3, 1.5, 1.5]


def synthetic_rows(count: int, seed: int = 7) -> Iterator[list[LedgerRow]]:
    """``count`` rows over the 30 days before END, oldest first, in chunks of CHUNK."""
    rng = random.Random(seed)
    span = DAYS * 86_400_000_000
    end_us = to_epoch_us(END)
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        tenants = rng.choices(_TENANTS, _WEIGHTS, k=n)
        statuses = rng.choices(_STATUSES, _STATUS_WEIGHTS, k=n)
        chunk = []
        for i in range(n):
            at = end_us - span + (start + i) * span // count + rng.randrange(span // count)  # in time order, as written
            alias = _ALIASES[rng.randrange(len(_ALIASES))]
            region = ("east", "west")[rng.random() < 0.3]
            hit = rng.random() < 0.1
            prompt, completion = rng.randrange(20, 4_000), rng.randrange(1, 1_000)
            cost = 0 if hit else prompt * 3_000_000 + completion * 15_000_000
            chunk.append(
                LedgerRow(
                    f"bench-{start + i}", at, tenants[i], f"key-{rng.randrange(3)}", alias, f"{alias}-{region}",
                    "vllm" if region == "east" else "openai", prompt, completion, rng.randrange(0, prompt // 2 + 1),
                    cost, statuses[i], at + 800_000, 800.0, 120.0, None if statuses[i] < 400 else "upstream", "cheapest",
                    {}, None, False, 1, None, None, "hit" if hit else None, None, (prompt * 3_000_000) if hit else 0,
                )
            )  # fmt: skip
        yield chunk


@asynccontextmanager
async def opened_store(kind: str, dsn: str) -> AsyncIterator[LedgerStore]:
    """A fresh store of ``kind``; removed afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="usage-rollups-") as folder:
            sqlite = SQLiteStore(str(Path(folder) / "ledger.sqlite"))
            await sqlite.open()
            try:
                yield sqlite
            finally:
                await sqlite.close()
        return
    admin = await asyncpg.connect(dsn, timeout=10)
    name = f"sluicegate_bench_{secrets.token_hex(5)}"
    await admin.execute(f"CREATE DATABASE {name}")
    postgres = PostgresStore(f"{dsn.rsplit('/', 1)[0]}/{name}", timeout_s=120.0, query_timeout_s=600.0)
    try:
        yield postgres
    finally:
        await postgres.close()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def fill(store: LedgerStore, rows: int) -> float:
    """Write ``rows`` synthetic rows through the store's batch path; returns rows per second."""
    began, written = time.perf_counter(), 0
    for chunk in synthetic_rows(rows):
        await store.write(chunk)
        written += len(chunk)
        if written % 100_000 == 0:
            print(f"  {written:>9,} rows  {written / (time.perf_counter() - began):>9,.0f} rows/s", file=sys.stderr)
    return rows / (time.perf_counter() - began)


def reports() -> list[tuple[str, UsageQuery]]:
    """The reports timed: a console's 30-day views, on whole hours and as of a moment within an hour."""
    start, now = END - timedelta(days=DAYS), END - timedelta(minutes=17, seconds=3)

    def query(a: datetime, b: datetime, group_by: list[GroupBy], tenant: str | None = None) -> UsageQuery:
        return UsageQuery(start=a, end=b, tenant=tenant, group_by=group_by)

    return [
        ("30 days by day", query(start, END, ["day"])),
        ("30 days by tenant,model", query(start, END, ["tenant", "model"])),
        ("30 days by day, to now", query(now - timedelta(days=DAYS), now, ["day"])),
        ("30 days by tenant,model, to now", query(now - timedelta(days=DAYS), now, ["tenant", "model"])),
        ("one tenant, 30 days by day,model", query(start, END, ["day", "model"], _TENANTS[0])),
        ("30 days by hour", query(start, END, ["hour"])),
    ]


async def timed(store: LedgerStore, query: UsageQuery, source: str, repeat: int) -> tuple[float, int, object]:
    """Median seconds of ``repeat`` runs, the number of groups, and the result."""
    times, result = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        result = await store.usage(query, "auto" if source == "auto" else "raw")
        times.append(time.perf_counter() - began)
    assert result is not None
    return statistics.median(times), len(result), result


async def run(kind: str, rows: int, dsn: str, repeat: int) -> None:
    async with opened_store(kind, dsn) as store:
        rate = await fill(store, rows)
        print(f"store {kind}: {rows:,} rows written at {rate:,.0f} rows/s (rollups kept as written)")
        print(f"{'report':<34} {'groups':>7} {'rollup ms':>10} {'raw ms':>10} {'speed-up':>9}")
        for label, query in reports():
            assert reads_rollup(query), label
            fast, groups, got = await timed(store, query, "auto", repeat)
            slow, _, expected = await timed(store, query, "raw", repeat)
            assert got == expected, f"{label}: the rollup and the rows disagree"
            print(f"{label:<34} {groups:>7} {fast * 1e3:>10.1f} {slow * 1e3:>10.1f} {slow / fast:>8.1f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time usage reports read from the rollups against the raw rows.")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--dsn", default="postgresql://postgres@127.0.0.1:5432/test", help="an admin DSN; a throwaway database is made beside it"
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    asyncio.run(run(args.store, args.rows, args.dsn, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
