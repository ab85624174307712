"""The ledger's backlog, as the metrics read it: rows in memory, bytes spooled, whether the store takes writes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from budgets.ledger import BatchingLedger, LedgerOptions
from budgets.ledger_query import UsageQuery, UsageRow
from budgets.ledger_row import LedgerRow


def _row(request_id: str) -> LedgerRow:
    return LedgerRow(request_id, 1_700_000_000_000_000, "acme", "k1", "gpt", "dep", "openai", 10, 5, 0, 7, 200,
                     1_700_000_000_250_000, 250.0, None, None, None, {}, None, False, 1, None)  # fmt: skip


class FlakyStore:
    """A LedgerStore that fails every write while ``down``."""

    def __init__(self) -> None:
        self.down = True
        self.written: list[LedgerRow] = []

    async def open(self) -> None:
        return None

    async def close(self, timeout_s: float | None = None) -> None:
        return None

    async def write(self, rows: Sequence[LedgerRow]) -> None:
        if self.down:
            raise ConnectionError("down")
        self.written.extend(rows)

    async def usage(self, query: UsageQuery) -> list[UsageRow]:
        return []

    async def rows(self, tenant: str | None, start: datetime, end: datetime, limit: int) -> list[LedgerRow]:
        return []

    async def ping(self) -> bool:
        return not self.down

    def refuses(self, exc: Exception) -> bool:
        return False


async def test_rows_go_from_memory_to_the_spool_and_back_to_the_store(tmp_path: Path) -> None:
    store = FlakyStore()
    ledger = BatchingLedger(store, str(tmp_path / "ledger.spool"), LedgerOptions(flush_interval_s=60, batch_size=100))
    await ledger.start()
    try:
        assert ledger.backlog().pending_rows == 0 and ledger.backlog().spool_bytes == 0 and ledger.backlog().healthy
        ledger.record(_row("a"))
        ledger.record(_row("b"))
        assert ledger.backlog().pending_rows == 2
        await ledger.flush()  # the store is down: both rows are spooled
        backlog = ledger.backlog()
        assert backlog.pending_rows == 0 and not backlog.healthy
        assert backlog.spool_bytes == (tmp_path / "ledger.spool").stat().st_size > 0
        store.down = False
        await ledger.flush()  # replayed
        backlog = ledger.backlog()
        assert backlog.spool_bytes == 0 and backlog.healthy
        assert [row.request_id for row in store.written] == ["a", "b"]
    finally:
        await ledger.close()
