"""How fast each ledger sink persists rows, and what ``record()`` costs the request path.

``python -m bench.ledger_bench [--seconds 3] [--dsn postgresql://postgres@127.0.0.1:5432/test]``

For each sink (SQLite; PostgreSQL with COPY into a staging table; PostgreSQL
with a single ``INSERT ... SELECT FROM unnest(...)``) it records rows in
chunks of 5,000 and flushes after each chunk (one transaction each, as the
writer does once a backlog builds), for about ``--seconds`` of writing, and
prints fresh rows/s. It then writes the same rows again, which is what a spool
replay after an outage does (every row a conflict), and prints that rate too.
PostgreSQL runs in a throwaway database that is dropped afterwards; it is
skipped when the server cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import asyncpg

from budgets.ledger import BatchingLedger, LedgerOptions
from budgets.ledger_postgres import PostgresLedger, WriteMethod
from budgets.ledger_query import to_epoch_us
from budgets.ledger_row import LedgerRow
from budgets.ledger_sqlite import SQLiteLedger

CHUNK = 5_000
_T0_US = to_epoch_us(datetime(2025, 1, 31, 12, tzinfo=timezone.utc))
_OPTIONS = LedgerOptions(flush_interval_s=0.2, batch_size=500, max_pending=1_000_000)


def make_rows(start: int, count: int) -> list[LedgerRow]:
    """Realistic rows spread over two months (so two partitions are in play)."""
    return [
        LedgerRow(
            request_id=f"bench-{n:012d}", tenant=f"tenant-{n % 17}", key_id=f"key-{n % 101}",
            model="gpt-4o-mini", deployment="azure-eastus-1", provider="azure_openai",
            prompt_tokens=812, completion_tokens=143, cached_tokens=256, cost=209_700_000 + n,
            latency_ms=412.75, ttft_ms=88.5, status=200 if n % 50 else 429,
            error=None if n % 50 else "rate_limited", route_reason="cost", pii_entities={"EMAIL_ADDRESS": 1},
            trace_id=f"{n:032x}", stream=bool(n % 2), config_version=12, arm="candidate" if n % 10 == 0 else "stable",
            started_us=_T0_US + 1000 * n, finished_us=_T0_US + 1000 * (n + 412),
        )
        for n in range(start, start + count)
    ]


def record_cost_ns(ledger: BatchingLedger, rows: list[LedgerRow]) -> float:
    began = time.perf_counter_ns()
    for row in rows:
        ledger.record(row)
    return (time.perf_counter_ns() - began) / len(rows)


async def run_sink(name: str, build: Callable[[], BatchingLedger], seconds: float) -> None:
    ledger = build()
    await ledger.start()
    written: list[LedgerRow] = []
    record_ns: list[float] = []
    fresh_s = 0.0  # time in record() + flush() only; building rows is not the sink's cost
    while fresh_s < seconds:
        rows = make_rows(len(written), CHUNK)
        began = time.perf_counter()
        record_ns.append(record_cost_ns(ledger, rows))
        await ledger.flush()
        fresh_s += time.perf_counter() - began
        written += rows
    began = time.perf_counter()
    for start in range(0, len(written), CHUNK):
        for row in written[start : start + CHUNK]:
            ledger.record(row)
        await ledger.flush()
    replay_s = time.perf_counter() - began
    await ledger.close()
    if not ledger.healthy or ledger.spool.pending():
        raise RuntimeError(f"{name}: writes failed during the benchmark; figures would be meaningless")
    print(
        f"{name:<18} {len(written) / fresh_s:>10,.0f} rows/s fresh  "
        f"{len(written) / replay_s:>10,.0f} rows/s duplicates  "
        f"record() {sum(record_ns) / len(record_ns):>5.0f} ns/call  ({len(written):,} rows)"
    )


async def run_postgres(dsn: str, spool_dir: Path, seconds: float) -> None:
    try:
        admin = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"postgres           skipped: not reachable ({type(exc).__name__})")
        return
    base = dsn.rsplit("/", 1)[0]
    methods: tuple[WriteMethod, ...] = ("copy", "unnest")
    try:
        for method in methods:
            name = f"sluicegate_bench_{secrets.token_hex(4)}"
            await admin.execute(f"CREATE DATABASE {name}")
            try:
                build = partial(PostgresLedger, f"{base}/{name}", str(spool_dir / name), options=_OPTIONS,
                                write_method=method)  # fmt: skip
                await run_sink(f"postgres ({method})", build, seconds)
            finally:
                await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        tmp_path = Path(tmp)
        print(f"batch_size={_OPTIONS.batch_size}, {CHUNK:,} rows per flush, ~{args.seconds:g}s per sink")
        await run_sink(
            "sqlite",
            lambda: SQLiteLedger(str(tmp_path / "ledger.sqlite"), options=_OPTIONS),
            args.seconds,
        )
        await run_postgres(args.dsn, tmp_path, args.seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent writing fresh rows per sink")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test", help="PostgreSQL admin DSN")
    asyncio.run(main_async(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
