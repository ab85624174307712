"""The embedded ledger paces a round's batch: the event loop runs for a millisecond between two of its statements.

A batch of a usual round's size written back to back kept a busy loop past
its capacity for the length of the whole batch; paced, each statement takes
its own slice. A backlog (more than ``_PACED_ROWS`` rows) is written without
pauses, to catch up.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from budgets import ledger_sqlite
from budgets.ledger_sqlite import SQLiteStore
from tests.contract.test_ledger import make_row


class _Timed:
    """The writer's connection, with the time of each INSERT it runs."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.inserts: list[float] = []

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.startswith("INSERT"):
            self.inserts.append(time.monotonic())
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    store = SQLiteStore(str(tmp_path / "ledger.sqlite"))
    await store.open()
    yield store
    await store.close()


def _timed(store: SQLiteStore) -> _Timed:
    assert store._writer is not None
    timed = _Timed(store._writer)
    store._writer = timed  # type: ignore[assignment]
    return timed


def _count(store: SQLiteStore) -> int:
    assert store._writer is not None
    return int(store._writer.execute("SELECT count(*) FROM ledger").fetchone()[0])


def _gaps(times: list[float]) -> Iterator[float]:
    return (later - earlier for earlier, later in zip(times, times[1:]))


async def test_a_rounds_batch_gives_the_loop_a_millisecond_between_statements(store: SQLiteStore) -> None:
    timed = _timed(store)
    turns: list[float] = []
    writing = True

    async def other_work() -> None:  # what requests would do meanwhile: a turn of the loop whenever it is free
        while writing:
            turns.append(time.monotonic())
            await asyncio.sleep(0)

    worker = asyncio.ensure_future(other_work())
    await asyncio.sleep(0)
    await store.write([make_row(n) for n in range(160)])  # ten statements of sixteen rows
    writing = False
    await worker
    assert len(timed.inserts) == 10
    assert min(_gaps(timed.inserts)) >= 0.9 * ledger_sqlite._PAUSE_S
    for earlier, later in zip(timed.inserts, timed.inserts[1:]):  # the loop ran other work in every pause
        assert any(earlier < turn < later for turn in turns)
    timed.conn.execute("SELECT 1")  # the store is left usable
    assert _count(store) == 160


async def test_a_backlog_is_written_without_pauses(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    sleep = asyncio.sleep

    async def recorded(delay: float, result: Any = None) -> Any:
        pauses.append(delay)
        return await sleep(delay, result)

    monkeypatch.setattr(ledger_sqlite, "_PACED_ROWS", 100)
    monkeypatch.setattr(asyncio, "sleep", recorded)
    await store.write([make_row(n) for n in range(160)])  # over the (lowered) bound: a backlog
    assert pauses and set(pauses) == {0}
    pauses.clear()
    await store.write([make_row(n) for n in range(160, 260)])  # at the bound: paced, the rollups' statements too
    assert pauses and set(pauses) == {ledger_sqlite._PAUSE_S}
    assert _count(store) == 260
