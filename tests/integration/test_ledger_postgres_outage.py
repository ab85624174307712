"""The PostgreSQL ledger through an outage: nothing lost, nothing doubled.

The database is made unreachable with a TCP proxy the test controls, so the
shared server keeps running for everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest

from budgets.ledger import LedgerOptions
from budgets.ledger_postgres import PostgresLedger, PostgresStore
from budgets.ledger_row import LedgerRow
from budgets.ledger_spool import Spool
from budgets.migrate import apply_migrations, load_migrations
from tests.contract.test_ledger import ADMIN_DSN, database_dsn, make_row

FAST_RETRY = LedgerOptions(flush_interval_s=0.05, retry_initial_s=0.05, retry_max_s=0.2)


class TcpProxy:
    """Forwards a local port to PostgreSQL; stop() refuses and cuts every connection."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self._target)
        except OSError:
            client_w.transport.abort()
            return
        self._writers.update((client_w, server_w))
        try:
            await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
        finally:
            self._writers.difference_update((client_w, server_w))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A fresh database per test, so spool and partition state cannot leak between tests."""
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        pytest.skip("PostgreSQL not reachable at SLUICEGATE_TEST_POSTGRES_DSN")
    name = f"sluicegate_test_{secrets.token_hex(6)}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    host_port = ADMIN_DSN.split("@", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    tcp = TcpProxy(host, int(port or 5432))
    await tcp.start()
    yield tcp
    if tcp._server is not None:
        await tcp.stop()


def proxied_dsn(proxy: TcpProxy, database: str) -> str:
    return f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}"


async def stored(database: str) -> list[tuple[str, datetime]]:
    """(request_id, started_at) of every stored row, read past the proxy."""
    conn = await asyncpg.connect(database_dsn(database))
    try:
        records = await conn.fetch("SELECT request_id, started_at FROM ledger ORDER BY request_id, started_at")
    finally:
        await conn.close()
    return [(r["request_id"], r["started_at"]) for r in records]


def keys(rows: list[LedgerRow]) -> list[tuple[str, datetime]]:
    return sorted((r.request_id, r.started_at) for r in rows)


async def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_rows_recorded_during_an_outage_arrive_exactly_once(
    database: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    ledger = PostgresLedger(proxied_dsn(proxy, database), str(tmp_path / "spool"), options=FAST_RETRY)
    await ledger.start()
    before = [make_row(n) for n in range(50)]
    for row in before:
        ledger.record(row)
    await ledger.flush()
    assert await stored(database) == keys(before)

    await proxy.stop()
    # Some repeat rows already stored (a retried request); others start a new month.
    during = before[:10] + [make_row(n, started_at=datetime(2024, 7, 1, tzinfo=timezone.utc) + timedelta(seconds=n))
                            for n in range(100, 300)]  # fmt: skip
    for row in during:
        ledger.record(row)
    await ledger.flush()
    assert not ledger.healthy and ledger.spool.pending()
    assert await stored(database) == keys(before)  # nothing reached the database

    await proxy.start()
    expected = keys(before + during[10:])

    async def replayed() -> bool:
        # The spool is released only after its rows are committed.
        return ledger.healthy and not ledger.spool.pending()

    await wait_for(replayed)  # the background writer replays on its own
    assert await stored(database) == expected
    await ledger.close()
    assert await stored(database) == expected


async def test_spool_left_by_a_previous_run_is_replayed_at_start(
    database: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    crashed_replay = [make_row(n) for n in range(5)]
    spilled = [make_row(n) for n in range(5, 20)]
    # A replay that crashed before finishing, and a crash in the middle of an append.
    Spool(tmp_path / "other").append(crashed_replay)
    (tmp_path / "other").rename(spool.claimed_path)
    spool.append(spilled[:10])
    with open(spool.path, "ab") as fh:
        fh.write(b'{"request_id":"req-torn","tenant":"ten')
    spool.append(spilled[10:])  # the process came back and spooled more before dying again

    ledger = PostgresLedger(proxied_dsn(proxy, database), str(spool.path), options=FAST_RETRY)
    await ledger.start()
    try:

        async def replayed() -> bool:
            return not spool.pending()

        await wait_for(replayed)  # the writer's first round, right after start
        assert await stored(database) == keys(crashed_replay + spilled)
    finally:
        await ledger.close()


async def test_starting_while_the_database_is_down(database: str, proxy: TcpProxy, tmp_path: Path) -> None:
    await proxy.stop()
    ledger = PostgresLedger(proxied_dsn(proxy, database), str(tmp_path / "spool"), options=FAST_RETRY,
                            timeout_s=1)  # fmt: skip
    await ledger.start()  # must not fail: requests keep flowing and rows go to the spool
    rows = [make_row(n) for n in range(30)]
    for row in rows:
        ledger.record(row)
    await ledger.close()
    assert ledger.spool.pending()

    await proxy.start()
    again = PostgresLedger(proxied_dsn(proxy, database), str(tmp_path / "spool"), options=FAST_RETRY)
    await again.start()
    await again.close()
    assert await stored(database) == keys(rows)
    assert not again.spool.pending()


async def test_rows_the_database_refuses_are_set_aside(database: str, proxy: TcpProxy, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    poison = make_row(1, error="bad\x00byte")  # PostgreSQL text cannot hold NUL
    good = [make_row(n) for n in range(2, 6)]
    spool.append([good[0], poison, *good[1:]])
    ledger = PostgresLedger(proxied_dsn(proxy, database), str(spool.path), options=FAST_RETRY)
    await ledger.start()
    await ledger.close()
    assert await stored(database) == keys(good)
    assert not spool.pending()
    assert spool.rejected_path.read_bytes().count(b"\n") == 1


async def test_concurrent_migrations_and_partition_creation(database: str) -> None:
    dsn = database_dsn(database)
    conns = [await asyncpg.connect(dsn) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(apply_migrations(conn) for conn in conns))
        versions = [m.version for m in load_migrations()]
        assert sorted(v for run in applied for v in run) == versions  # each applied exactly once
        assert [r["version"] for r in await conns[0].fetch("SELECT version FROM schema_migrations")] == versions
    finally:
        for conn in conns:
            await conn.close()

    stores = [PostgresStore(dsn) for _ in range(4)]
    month = datetime(2031, 3, 15, tzinfo=timezone.utc)
    batches = [[make_row(n * 10 + i, started_at=month + timedelta(seconds=i)) for i in range(3)] for n in range(4)]
    try:
        await asyncio.gather(*(store.write(batch) for store, batch in zip(stores, batches, strict=True)))
    finally:
        for store in stores:
            await store.close()
    assert await stored(database) == keys([row for batch in batches for row in batch])
