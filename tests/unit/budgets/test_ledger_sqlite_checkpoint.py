"""WAL checkpoints run on a thread of their own, copy what was written into the database file, and let the WAL start over."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from budgets import ledger_sqlite
from budgets.ledger_sqlite import SQLiteStore
from tests.contract.test_ledger import make_row


async def test_a_checkpoint_runs_once_enough_rows_are_written_on_a_thread_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_sqlite, "_CHECKPOINT_ROWS", 40)
    seen: list[tuple[str, int, int]] = []
    checkpoint = ledger_sqlite._checkpoint_wal
    path = tmp_path / "ledger.sqlite"

    def spy(conn: sqlite3.Connection) -> None:
        before = path.stat().st_size
        checkpoint(conn)
        seen.append((threading.current_thread().name, before, path.stat().st_size))

    monkeypatch.setattr(ledger_sqlite, "_checkpoint_wal", spy)
    store = SQLiteStore(str(path))
    await store.open()
    try:
        await store.write([make_row(n) for n in range(30)])
        assert seen == []  # fewer rows than a checkpoint waits for
        await store.write([make_row(n) for n in range(30, 60)])
        assert store._checkpoint is not None
        await store._checkpoint
        assert len(seen) == 1
        name, size_before, size_after = seen[0]
        assert name.startswith("ledger-checkpoint")  # not the reader's thread: a RESTART may wait there
        assert size_after > size_before  # the rows went from the WAL into the database file
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM ledger").fetchone()[0] == 60


async def test_the_wal_starts_over_after_each_checkpoint_while_writes_go_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches come one after another, as under steady load, and each fills the checkpoint's quota: a checkpoint
    # would run during every write. None would then copy the whole WAL, the WAL would never start over, and its
    # file would grow by every row.
    monkeypatch.setattr(ledger_sqlite, "_CHECKPOINT_ROWS", 50)
    path = tmp_path / "ledger.sqlite"
    store = SQLiteStore(str(path))
    await store.open()
    wal = Path(f"{path}-wal")
    sizes = []
    try:
        for n in range(0, 4000, 50):
            await store.write([make_row(i) for i in range(n, n + 50)])
            sizes.append(wal.stat().st_size)
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM ledger").fetchone()[0] == 4000
    # The WAL's file keeps the size of its longest run between two restarts (a few batches), not of all 4,000 rows.
    assert max(sizes) < 3 * max(sizes[:10])
