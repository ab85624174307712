"""The ledger writer's rounds under steady load: one transaction an interval, not one per write's worth of rows."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from budgets.ledger import BatchingLedger, LedgerOptions
from budgets.ledger_query import UsageQuery, UsageRow
from budgets.ledger_row import LedgerRow


def _row(request_id: str) -> LedgerRow:
    return LedgerRow(request_id, 1_700_000_000_000_000, "acme", "k1", "gpt", "dep", "openai", 10, 5, 0, 7, 200,
                     1_700_000_000_250_000, 250.0, None, None, None, {}, None, False, 1, None)  # fmt: skip


class SlowStore:
    """A LedgerStore whose every write takes ``write_s`` with the loop free, as a real one yields between statements."""

    def __init__(self, write_s: float) -> None:
        self.write_s = write_s
        self.batches: list[int] = []
        self.written: list[str] = []

    async def open(self) -> None:
        return None

    async def close(self, timeout_s: float | None = None) -> None:
        return None

    async def write(self, rows: Sequence[LedgerRow]) -> None:
        await asyncio.sleep(self.write_s)
        self.batches.append(len(rows))
        self.written.extend(row.request_id for row in rows)

    async def usage(self, query: UsageQuery) -> list[UsageRow]:
        return []

    async def rows(self, tenant: str | None, start: datetime, end: datetime, limit: int) -> list[LedgerRow]:
        return []

    async def ping(self) -> bool:
        return True

    def refuses(self, exc: Exception) -> bool:
        return False


async def test_rows_that_arrive_during_a_write_wait_for_the_next_interval(tmp_path: Path) -> None:
    store = SlowStore(write_s=0.005)
    interval = 0.1
    ledger = BatchingLedger(store, str(tmp_path / "ledger.spool"), LedgerOptions(flush_interval_s=interval, batch_size=5_000))
    await ledger.start()
    recorded: list[str] = []
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.6
        while loop.time() < end:  # a row every millisecond or so, for 0.6 s
            request_id = f"r{len(recorded)}"
            ledger.record(_row(request_id))
            recorded.append(request_id)
            await asyncio.sleep(0.001)
        rounds = len(store.batches)
        await ledger.flush()
    finally:
        await ledger.close()
    # About one transaction per interval (6 in 0.6 s), each with an interval's rows. A writer that took the
    # rows recorded during each write would have gone on writing a few rows every 5 ms: about a hundred.
    assert rounds <= 0.6 / interval + 4, store.batches
    assert max(store.batches) >= 20
    assert sorted(store.written) == sorted(recorded)  # each row once, none lost
