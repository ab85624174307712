"""The ledger writer's rounds under steady load: one transaction an interval, not one per write's worth of rows."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from budgets.ledger import BatchingLedger, LedgerOptions
from budgets.ledger_row import LedgerRow
from tests.contract.test_ledger import make_row
from tests.unit.budgets.test_ledger_backlog import FlakyStore


class SlowStore(FlakyStore):
    """A store that is up, and whose every write takes ``write_s`` with the loop free, as a real one yields between statements."""

    def __init__(self, write_s: float) -> None:
        super().__init__()
        self.down = False
        self.write_s = write_s
        self.batches: list[int] = []

    async def write(self, rows: Sequence[LedgerRow]) -> None:
        await asyncio.sleep(self.write_s)
        self.batches.append(len(rows))
        self.written.extend(rows)


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
            row = make_row(len(recorded))
            ledger.record(row)
            recorded.append(row.request_id)
            await asyncio.sleep(0.001)
        rounds = len(store.batches)
        await ledger.flush()
    finally:
        await ledger.close()
    # About one transaction per interval (6 in 0.6 s), each with an interval's rows. A writer that took the
    # rows recorded during each write would have gone on writing a few rows every 5 ms: about a hundred.
    assert rounds <= 0.6 / interval + 4, store.batches
    assert max(store.batches) >= 20
    assert sorted(row.request_id for row in store.written) == sorted(recorded)  # each row once, none lost
