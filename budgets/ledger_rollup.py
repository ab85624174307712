"""The ledger's rollups: one row of sums per hour (and per day), tenant, alias, deployment, provider and status.

Usage reports over whole days and hours read these sums instead of the raw
rows (``budgets.ledger_usage``); the daily rollup holds the same sums as the
hourly one in about a 24th of the rows, for reports over weeks and months.
Each sum is exactly the sum of the ledger rows it covers, because it is kept
in the transaction that inserts them and counts only the rows that insert
actually added (a replayed or duplicated row adds nothing). PostgreSQL keeps
them with a statement trigger (migration 0010); the embedded store aggregates
each batch here and upserts the result.

An hour or day is named by its first microsecond (UTC, since the epoch),
floored, so that a row's bucket and the report's range agree on every boundary.
"""

from __future__ import annotations

from collections.abc import Sequence

from budgets.ledger_row import LedgerRow

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US

# The rollup's key columns after the hour, and its sums, in table order (both stores).
KEY_COLUMNS = ("tenant", "model", "deployment", "provider", "status")
SUM_COLUMNS = (
    "requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "cost", "cache_hits", "saved",
)  # fmt: skip

# A key: (hour or day start in microseconds, tenant, model, deployment, provider, status).
HourKey = tuple[int, str, str, str, str, int]


def hour_floor(us: int) -> int:
    """The first microsecond of the hour holding ``us``."""
    return us - us % HOUR_US


def hour_ceil(us: int) -> int:
    """The first microsecond of the first hour starting at or after ``us``."""
    return -hour_floor(-us)


def day_floor(us: int) -> int:
    """The first microsecond of the UTC day holding ``us``."""
    return us - us % DAY_US


def day_ceil(us: int) -> int:
    """The first microsecond of the first UTC day starting at or after ``us``."""
    return -day_floor(-us)


class HourlySums:
    """Sums of a batch's inserted rows per rollup key, ready to be upserted."""

    __slots__ = ("_sums",)

    def __init__(self) -> None:
        self._sums: dict[HourKey, list[int]] = {}

    def __len__(self) -> int:
        return len(self._sums)

    def add(self, row: LedgerRow) -> None:
        """Count one row the store has just inserted."""
        key = (hour_floor(row.started_us), row.tenant, row.model, row.deployment, row.provider, row.status)
        sums = self._sums.get(key)
        if sums is None:
            sums = self._sums[key] = [0, 0, 0, 0, 0, 0, 0, 0]
        # the order of SUM_COLUMNS
        sums[0] += 1
        sums[1] += row.status >= 400
        sums[2] += row.prompt_tokens
        sums[3] += row.completion_tokens
        sums[4] += row.cached_tokens
        sums[5] += row.cost
        sums[6] += row.cache == "hit"
        sums[7] += row.saved

    def add_inserted(self, rows: Sequence[LedgerRow], inserted: Sequence[Sequence[object]]) -> None:
        """Count those of ``rows`` whose ``(request_id, started_us)`` the insert reported as added (first two items of each).

        A key inserted once by a statement that named it twice is the first
        row that named it (an ignoring insert keeps the first), so only that
        one counts.
        """
        if len(inserted) == len(rows):
            for row in rows:
                self.add(row)
            return
        pending = {(key[0], key[1]) for key in inserted}
        for row in rows:
            key = (row.request_id, row.started_us)
            if key in pending:
                pending.discard(key)
                self.add(row)

    def records(self) -> list[tuple[object, ...]]:
        """One ``(hour, *key, *sums)`` tuple per key, in no particular order."""
        return [(*key, *sums) for key, sums in self._sums.items()]

    def daily_records(self) -> list[tuple[object, ...]]:
        """The same sums per day: one ``(day, *key, *sums)`` tuple per key, in no particular order."""
        days: dict[HourKey, list[int]] = {}
        for (hour, tenant, model, deployment, provider, status), sums in self._sums.items():
            key = (day_floor(hour), tenant, model, deployment, provider, status)
            total = days.get(key)
            if total is None:
                days[key] = list(sums)
            else:
                for i, value in enumerate(sums):
                    total[i] += value
        return [(*key, *sums) for key, sums in days.items()]
