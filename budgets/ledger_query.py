"""Usage queries over the cost ledger's rows, shared by the SQLite and PostgreSQL stores.

``usage_sql`` reads the raw rows; ``budgets.ledger_usage`` reads the rollups
where they can answer, and the same expressions for the rows it still reads.

User input never reaches SQL text: each allowed group-by name maps to a fixed
expression per dialect, and every value travels as a bound parameter.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

import msgspec

GroupBy = Literal["tenant", "model", "deployment", "key", "day", "hour", "provider", "status"]
GROUP_BY_NAMES: frozenset[str] = frozenset(get_args(GroupBy))
Dialect = Literal["sqlite", "postgres"]
# Where a usage report is read from: the rollups where they can answer ("auto"), or the rows themselves.
UsageSource = Literal["auto", "raw"]

# Day and hour are UTC and formatted identically by both dialects so that
# FinOps reports do not depend on which store produced them.
_SQLITE_TIME = "(started_us / 1000000)"
GROUP_EXPR: dict[Dialect, dict[str, str]] = {
    "sqlite": {
        "tenant": "tenant",
        "model": "model",
        "deployment": "deployment",
        "key": "key_id",
        "provider": "provider",
        "status": "CAST(status AS TEXT)",
        "day": f"strftime('%Y-%m-%d', {_SQLITE_TIME}, 'unixepoch')",
        "hour": f"strftime('%Y-%m-%dT%H:00:00Z', {_SQLITE_TIME}, 'unixepoch')",
    },
    "postgres": {
        "tenant": "tenant",
        "model": "model",
        "deployment": "deployment",
        "key": "key_id",
        "provider": "provider",
        "status": "status::text",
        "day": "to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        "hour": "to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:00:00\"Z\"')",
    },
}

_TIME_COLUMN: dict[Dialect, str] = {"sqlite": "started_us", "postgres": "started_at"}

_AGGREGATES = ("prompt_tokens", "completion_tokens", "cached_tokens", "cost")
# Cache hits: the embedded table keeps the cache's result in the detail array (its ninth item).
IS_HIT: dict[Dialect, str] = {"sqlite": "json_extract(detail, '$[8]') = 'hit'", "postgres": "cache = 'hit'"}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken to be UTC; aware ones are converted to it."""
    if value.tzinfo is UTC:
        return value  # the common case, and on the write path for every row
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def to_epoch_us(value: datetime) -> int:
    """Exact integer microseconds since the epoch (no float rounding)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


def from_epoch_us(value: int) -> datetime:
    """The UTC datetime of integer microseconds since the epoch, exactly."""
    return _EPOCH + timedelta(microseconds=value)


class UsageQuery(msgspec.Struct, kw_only=True):
    """Aggregate ledger rows with ``start <= started_at < end``."""

    start: datetime
    end: datetime
    tenant: str | None = None
    group_by: list[GroupBy] = []

    def __post_init__(self) -> None:
        unknown = [name for name in self.group_by if name not in GROUP_BY_NAMES]
        if unknown:
            allowed = ", ".join(sorted(GROUP_BY_NAMES))
            raise ValueError(f"unknown group_by {unknown[0]!r}; allowed: {allowed}")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by names must not repeat")
        if as_utc(self.end) < as_utc(self.start):
            raise ValueError("end must not be before start")
        if "key" in self.group_by and "tenant" not in self.group_by:
            # Key ids are unique within a tenant only: a key is named by both.
            at = self.group_by.index("key")
            self.group_by = [*self.group_by[:at], "tenant", *self.group_by[at:]]


class UsageRow(msgspec.Struct, kw_only=True):
    """One group of a usage report; money in pico-USD, exact."""

    group: dict[str, str]
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost: int
    errors: int
    # Answers the response cache replayed, and what they had cost when first served (pico-USD).
    cache_hits: int = 0
    saved: int = 0


class Params:
    """Collects bound values and renders the dialect's placeholder for each."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.values: list[object] = []

    def add(self, value: object) -> str:
        self.values.append(value)
        return "?" if self.dialect == "sqlite" else f"${len(self.values)}"


def _time_value(dialect: Dialect, value: datetime) -> object:
    return to_epoch_us(value) if dialect == "sqlite" else as_utc(value)


def where_sql(dialect: Dialect, params: Params, tenant: str | None, start: datetime, end: datetime) -> str:
    """Rows with ``start <= started < end`` (of ``tenant`` when one is named)."""
    column = _TIME_COLUMN[dialect]
    clauses = [
        f"{column} >= {params.add(_time_value(dialect, start))}",
        f"{column} < {params.add(_time_value(dialect, end))}",
    ]
    if tenant is not None:
        clauses.append(f"tenant = {params.add(tenant)}")
    return " AND ".join(clauses)


def usage_sql(query: UsageQuery, dialect: Dialect) -> tuple[str, list[object]]:
    """SQL and parameters for a usage report over the raw rows; group columns come first."""
    params = Params(dialect)
    exprs = [GROUP_EXPR[dialect][name] for name in query.group_by]
    sums = [f"sum({col})" for col in _AGGREGATES]
    select = [*exprs, "count(*)", *sums, "count(*) FILTER (WHERE status >= 400)",
              f"count(*) FILTER (WHERE {IS_HIT[dialect]})", "sum(saved)"]  # fmt: skip
    where = where_sql(dialect, params, query.tenant, query.start, query.end)
    sql = f"SELECT {', '.join(select)} FROM ledger WHERE {where}"
    if exprs:
        positions = ", ".join(str(i + 1) for i in range(len(exprs)))
        sql += f" GROUP BY {positions} ORDER BY {positions}"
    return sql, params.values


def usage_rows(query: UsageQuery, records: list[tuple[object, ...]]) -> list[UsageRow]:
    """Result tuples of a usage report (group columns, then the sums in UsageRow's order) --> report rows (empty groups dropped)."""
    width = len(query.group_by)
    out: list[UsageRow] = []
    for record in records:
        requests = int(record[width] or 0)  # type: ignore[call-overload]
        if requests == 0:
            continue  # an ungrouped aggregate over no rows
        # Postgres sums bigint into numeric (a Decimal here): int() keeps it exact
        # where a cast to bigint could overflow on large fleets.
        totals = [int(v or 0) for v in record[width + 1 :]]  # type: ignore[call-overload]
        out.append(
            UsageRow(
                group={name: str(record[i]) for i, name in enumerate(query.group_by)},
                requests=requests,
                prompt_tokens=totals[0],
                completion_tokens=totals[1],
                cached_tokens=totals[2],
                cost=totals[3],
                errors=totals[4],
                cache_hits=totals[5],
                saved=totals[6],
            )
        )
    return out


def rows_sql(dialect: Dialect, tenant: str | None, start: datetime, end: datetime, limit: int) -> tuple[str, list[object]]:
    """WHERE/ORDER/LIMIT tail for listing raw rows, oldest first."""
    if limit < 0:
        raise ValueError("limit must not be negative")
    params = Params(dialect)
    where = where_sql(dialect, params, tenant, start, end)
    column = _TIME_COLUMN[dialect]
    return f"WHERE {where} ORDER BY {column}, request_id LIMIT {params.add(limit)}", params.values
