"""The PostgreSQL ledger against a database that hangs instead of failing (a black hole).

Connections to it are accepted and then never answered, including the ones the
pool already holds. Nothing may wait on it without a deadline: close() returns
within its drain budget with every row spooled, rows reach the spool within the
write deadline without a close, queries give up, and requests never wait on it.
Once the database answers again the spool replays every row exactly once.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from bench.fake_upstream import FakeUpstream
from budgets.ledger import BatchingLedger, LedgerOptions
from budgets.ledger_postgres import PostgresLedger
from budgets.ledger_query import UsageQuery
from budgets.ledger_row import LedgerRow, decode_spooled
from budgets.ledger_spool import Spool
from budgets.migrate import migrate
from core.config import Config
from tests.conftest import TEST_KEY, make_config
from tests.contract.test_ledger import ADMIN_DSN, ALL_TIME, database_dsn, make_row
from tests.fakes.blackhole import BlackHole
from tests.integration.gateway_server import running_gateway
from tests.integration.test_ledger_postgres_outage import database  # noqa: F401 (fixture)

FAST = LedgerOptions(flush_interval_s=0.05)


@pytest.fixture
def hole() -> Iterator[BlackHole]:
    host, _, port = ADMIN_DSN.split("@", 1)[1].split("/", 1)[0].partition(":")
    proxy = BlackHole(host, int(port or 5432))
    proxy.start()
    yield proxy
    proxy.close()


@pytest.fixture
async def migrated(database: str) -> str:  # noqa: F811 (the fixture imported above)
    await migrate(database_dsn(database))
    return database


def hole_dsn(hole: BlackHole, name: str) -> str:
    return f"postgresql://postgres@{hole.dsn_host}/{name}"


def spooled(spool: Spool) -> list[str]:
    """Request ids in the spool, the live file and a claimed one alike."""
    ids = []
    for path in (spool.claimed_path, spool.path):
        if path.exists():
            ids += [decode_spooled(line).request_id for line in path.read_bytes().splitlines() if line.strip()]
    return ids


async def stored_ids(name: str) -> list[str]:
    conn = await asyncpg.connect(database_dsn(name))
    try:
        return [r[0] for r in await conn.fetch("SELECT request_id FROM ledger ORDER BY request_id")]
    finally:
        await conn.close()


async def replay(name: str, spool_path: Path) -> None:
    """A new run of the ledger on the answering database, as after a restart."""
    ledger = PostgresLedger(database_dsn(name), str(spool_path), options=FAST)
    await ledger.start()
    await ledger.flush()
    await ledger.close()
    assert not ledger.spool.pending()


def ids(rows: list[LedgerRow]) -> list[str]:
    return sorted(row.request_id for row in rows)


async def test_close_spools_every_row_within_its_budget_and_the_replay_stores_each_once(
    migrated: str, hole: BlackHole, tmp_path: Path
) -> None:
    ledger = PostgresLedger(hole_dsn(hole, migrated), str(tmp_path / "spool"), options=FAST)
    await ledger.start()
    before = [make_row(n) for n in range(20)]
    for row in before:
        ledger.record(row)
    await ledger.flush()  # the pool now holds a connection that is about to go silent
    assert await stored_ids(migrated) == ids(before)

    hole.swallow()
    during = [make_row(n) for n in range(100, 400)]
    began = time.monotonic()
    for row in during[:150]:
        ledger.record(row)
    await asyncio.sleep(0.3)  # the writer is now waiting on the silent server
    for row in during[150:]:
        ledger.record(row)
    assert time.monotonic() - began < 1.0  # record() never waits on the database

    began = time.monotonic()
    await asyncio.wait_for(ledger.close(), 20)  # bounded here so a hang fails rather than stalls
    took = time.monotonic() - began
    assert took < FAST.drain_s + 1.5, f"close() took {took:.1f}s against a drain budget of {FAST.drain_s}s"
    assert sorted(spooled(ledger.spool)) == ids(during)
    assert await stored_ids(migrated) == ids(before)

    hole.forward()
    await replay(migrated, tmp_path / "spool")
    assert await stored_ids(migrated) == ids(before + during)  # each exactly once


async def test_rows_reach_the_spool_within_the_write_deadline_without_a_close(
    migrated: str, hole: BlackHole, tmp_path: Path
) -> None:
    ledger = PostgresLedger(hole_dsn(hole, migrated), str(tmp_path / "spool"), options=FAST, timeout_s=1.0)
    await ledger.start()
    try:
        ledger.record(make_row(1))
        await ledger.flush()
        hole.swallow()
        rows = [make_row(n) for n in range(10, 60)]
        for row in rows:
            ledger.record(row)
        # At risk only until the write deadline passes: then a SIGKILL would cost nothing.
        deadline = time.monotonic() + 1.0 + 2.0
        while sorted(spooled(ledger.spool)) != ids(rows):
            assert time.monotonic() < deadline, f"{len(spooled(ledger.spool))} of {len(rows)} rows spooled"
            await asyncio.sleep(0.05)
        assert not ledger.healthy
    finally:
        await asyncio.wait_for(ledger.close(), 10)


async def test_queries_and_ping_give_up_at_their_deadline(migrated: str, hole: BlackHole, tmp_path: Path) -> None:
    ledger = PostgresLedger(hole_dsn(hole, migrated), str(tmp_path / "spool"), options=FAST, timeout_s=0.5,
                            query_timeout_s=1.0)  # fmt: skip
    await ledger.start()
    try:
        assert await ledger.ping() is True
        hole.swallow()
        began = time.monotonic()
        assert await ledger.ping() is False
        with pytest.raises(TimeoutError):
            await ledger.usage(UsageQuery(start=ALL_TIME[0], end=ALL_TIME[1]))
        with pytest.raises(TimeoutError):
            await ledger.rows("tenant-a", *ALL_TIME, limit=10)
        assert time.monotonic() - began < 0.5 + 2 * 1.0 + 1.5
    finally:
        await asyncio.wait_for(ledger.close(), 10)


async def _latencies(base: str, clients: int, each: int) -> list[float]:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    seconds: list[float] = []
    async with aiohttp.ClientSession() as http:

        async def client() -> None:
            for _ in range(each):
                began = time.monotonic()
                async with http.post(f"{base}/v1/chat/completions", json=body, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200
                seconds.append(time.monotonic() - began)

        await asyncio.gather(*(client() for _ in range(clients)))
    return sorted(seconds)


def _p99(seconds: list[float]) -> float:
    return seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))]


@pytest.fixture
async def backlog(tmp_path: Path) -> AsyncIterator[Path]:
    """A spool an earlier run left (the database was down): the restart replays it."""
    spool = Spool(tmp_path / "restart.spool")
    spool.append([make_row(n, request_id=f"old-{secrets.token_hex(4)}-{n}") for n in range(20_000)])
    yield spool.path


async def test_requests_do_not_wait_on_a_black_holed_ledger_after_a_restart(
    migrated: str, hole: BlackHole, fake_upstream: FakeUpstream, backlog: Path, tmp_path: Path
) -> None:
    def config(spool: Path) -> Config:
        state = {"ledger": "postgres", "postgres_dsn": hole_dsn(hole, migrated), "ledger_spool_path": str(spool)}
        return make_config(fake_upstream.url, state=state)

    async with running_gateway(config(tmp_path / "healthy.spool")) as (base, _):
        await _latencies(base, 2, 5)  # warm up
        normal = await _latencies(base, 4, 15)

    hole.swallow()
    began = time.monotonic()
    async with running_gateway(config(backlog)) as (base, gateway):
        assert gateway.started and time.monotonic() - began < 3.0, "start-up waited on the database"
        silent = await _latencies(base, 4, 15)
        assert isinstance(gateway.ledger, BatchingLedger) and gateway.ledger.spool.pending()  # nothing was written
    # Generous: the point is a held-up request (a second or more), not a few milliseconds.
    assert _p99(silent) < max(0.25, 3 * _p99(normal)), (
        f"p99 {_p99(silent) * 1000:.0f} ms with the database silent, {_p99(normal) * 1000:.0f} ms answering"
    )
