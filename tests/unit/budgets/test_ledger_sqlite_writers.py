"""Two writers on one SQLite file in one process: the second waits for the first's transaction with the loop free.

A busy handler inside SQLite would block the event loop, and with it the first
writer's transaction, which yields between its statements: the second writer
would wait out its whole timeout and fail. Here it waits on the loop's clock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from budgets import ledger_sqlite
from budgets.ledger_sqlite import SQLiteStore
from tests.contract.test_ledger import make_row


async def _stores(path: Path, n: int) -> list[SQLiteStore]:
    stores = [SQLiteStore(str(path)) for _ in range(n)]
    for store in stores:
        await store.open()
    return stores


def _count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM ledger").fetchone()[0])


async def test_a_second_writer_waits_for_a_transaction_that_yields(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    first, second = await _stores(path, 2)
    try:
        rows = [make_row(n) for n in range(60)]
        holder = asyncio.ensure_future(first.write(rows[:40]))  # three statements, yielding between them
        await asyncio.sleep(0)  # it has begun and holds the write lock
        assert not holder.done()
        await second.write(rows[20:])  # overlaps: duplicates are ignored
        await holder
        assert _count(path) == 60
    finally:
        await first.close()
        await second.close()


async def test_a_writer_that_cannot_get_the_lock_fails_after_its_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_sqlite, "_BUSY_WAIT_S", 0.05)
    path = tmp_path / "ledger.sqlite"
    (store,) = await _stores(path, 1)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # held, never released during the write
        with pytest.raises(sqlite3.OperationalError):
            await store.write([make_row(1)])
        other.execute("ROLLBACK")
        await store.write([make_row(1)])  # the lock free again: the batch goes in
        assert _count(path) == 1
    finally:
        other.close()
        await store.close()


async def test_many_writers_on_one_file_keep_every_row_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    stores = await _stores(path, 4)
    rows = [make_row(n) for n in range(200)]
    try:

        async def write(i: int) -> None:
            share = rows[i * 40 : i * 40 + 80]
            for start in range(0, len(share), 20):
                await stores[i].write(share[start : start + 20])

        await asyncio.gather(*(write(i) for i in range(4)))
        assert _count(path) == 200
    finally:
        for store in stores:
            await store.close()
