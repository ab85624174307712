"""Usage reports read from the rollups where they can answer them, exactly as the raw rows would.

The rollups (``ledger_daily``, ``ledger_hourly``) key their sums by day or
hour, tenant, model, deployment, provider and status, so a report grouped by
any of those (day and hour included) and filtered by tenant is a sum of
rollup rows. A range is cut in up to five parts: its whole days from the
daily rollup (unless grouped by hour), the whole hours around them from the
hourly one, and the minutes at either edge from the raw rows; the parts are
summed per group in one query. A report grouped by key, or a range within a
single hour, reads the raw rows (``budgets.ledger_query.usage_sql``). Either
way the result is the same, to the pico-dollar and in the same order: the
groups are rendered by the same expressions and sorted by the same database.

The raw rows at an edge are found through the ``(tenant, started)`` index:
with no tenant named, the edge hour's tenants are read from the hourly
rollup, which holds every tenant that has a row in that hour.
"""

from __future__ import annotations

from budgets.ledger_query import (
    GROUP_EXPR,
    IS_HIT,
    Dialect,
    Params,
    UsageQuery,
    from_epoch_us,
    to_epoch_us,
    where_sql,
)
from budgets.ledger_query import usage_sql as raw_usage_sql
from budgets.ledger_rollup import day_ceil, day_floor, hour_ceil, hour_floor

# Group-by names the rollups can answer.
ROLLUP_GROUPS = frozenset({"tenant", "model", "deployment", "provider", "status", "day", "hour"})

# Each rollup's table and bucket column, per dialect.
_HOURLY: dict[Dialect, tuple[str, str]] = {"sqlite": ("ledger_hourly", "hour_us"), "postgres": ("ledger_hourly", "hour")}
_DAILY: dict[Dialect, tuple[str, str]] = {"sqlite": ("ledger_daily", "day_us"), "postgres": ("ledger_daily", "day")}

# The sums, in the order usage_rows() reads them; per rollup row, and per raw row.
_SUMS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost", "errors", "cache_hits", "saved")
_RAW_VALUES: dict[Dialect, tuple[str, ...]] = {
    dialect: (
        "1", "prompt_tokens", "completion_tokens", "cached_tokens", "cost",
        "CASE WHEN status >= 400 THEN 1 ELSE 0 END", f"CASE WHEN {IS_HIT[dialect]} THEN 1 ELSE 0 END", "saved",
    )
    for dialect in ("sqlite", "postgres")
}  # fmt: skip


def _bucket_expr(dialect: Dialect, bucket: str) -> dict[str, str]:
    """Group expressions over a rollup whose bucket column is ``bucket``: day and hour as the raw query renders them."""
    if dialect == "sqlite":
        seconds = f"{bucket} / 1000000"
        return {
            **GROUP_EXPR[dialect],
            "day": f"strftime('%Y-%m-%d', {seconds}, 'unixepoch')",
            "hour": f"strftime('%Y-%m-%dT%H:00:00Z', {seconds}, 'unixepoch')",
        }
    return {
        **GROUP_EXPR[dialect],
        "day": f"to_char({bucket} AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        "hour": f"to_char({bucket} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:00:00\"Z\"')",
    }


def reads_rollup(query: UsageQuery) -> bool:
    """True when the report is answered (at least for its whole hours) from the rollups."""
    if not set(query.group_by) <= ROLLUP_GROUPS:
        return False
    return hour_ceil(to_epoch_us(query.start)) < hour_floor(to_epoch_us(query.end))


def usage_sql(query: UsageQuery, dialect: Dialect) -> tuple[str, list[object]]:
    """SQL and parameters for a usage report, from the rollups when :func:`reads_rollup`; group columns first."""
    if not reads_rollup(query):
        return raw_usage_sql(query, dialect)
    start, end = to_epoch_us(query.start), to_epoch_us(query.end)
    first_hour, last_hour = hour_ceil(start), hour_floor(end)
    first_day, last_day = day_ceil(first_hour), day_floor(last_hour)
    params = Params(dialect)
    parts: list[str] = []
    if "hour" in query.group_by or first_day >= last_day:
        parts.append(_rollup_part(query, dialect, params, _HOURLY[dialect], first_hour, last_hour))
    else:
        parts.append(_rollup_part(query, dialect, params, _DAILY[dialect], first_day, last_day))
        if first_hour < first_day:
            parts.append(_rollup_part(query, dialect, params, _HOURLY[dialect], first_hour, first_day))
        if last_day < last_hour:
            parts.append(_rollup_part(query, dialect, params, _HOURLY[dialect], last_day, last_hour))
    if start < first_hour:
        parts.append(_edge_part(query, dialect, params, start, first_hour))
    if last_hour < end:
        parts.append(_edge_part(query, dialect, params, last_hour, end))
    groups = [f"g{i}" for i in range(len(query.group_by))]
    select = [*groups, *(f"sum({name})" for name in _SUMS)]
    sql = f"SELECT {', '.join(select)} FROM ({' UNION ALL '.join(parts)}) AS parts"
    if groups:
        positions = ", ".join(str(i + 1) for i in range(len(groups)))
        sql += f" GROUP BY {positions} ORDER BY {positions}"
    return sql, params.values


def _bucket_value(dialect: Dialect, us: int) -> object:
    return us if dialect == "sqlite" else from_epoch_us(us)


def _columns(exprs: list[str], values: tuple[str, ...]) -> str:
    named = [f"{expr} AS g{i}" for i, expr in enumerate(exprs)]
    return ", ".join([*named, *(f"{value} AS {name}" for value, name in zip(values, _SUMS, strict=True))])


def _rollup_part(query: UsageQuery, dialect: Dialect, params: Params, rollup: tuple[str, str], first: int, last: int) -> str:
    """The rows of a rollup whose buckets start in ``[first, last)``."""
    table, bucket = rollup
    clauses = [f"{bucket} >= {params.add(_bucket_value(dialect, first))}", f"{bucket} < {params.add(_bucket_value(dialect, last))}"]
    if query.tenant is not None:
        clauses.append(f"tenant = {params.add(query.tenant)}")
    exprs = [_bucket_expr(dialect, bucket)[name] for name in query.group_by]
    return f"SELECT {_columns(exprs, _SUMS)} FROM {table} WHERE {' AND '.join(clauses)}"


def _edge_part(query: UsageQuery, dialect: Dialect, params: Params, start: int, end: int) -> str:
    """The raw rows of ``[start, end)``, which lies within one hour."""
    where = where_sql(dialect, params, query.tenant, from_epoch_us(start), from_epoch_us(end))
    if query.tenant is None:
        table, bucket = _HOURLY[dialect]
        hour = params.add(_bucket_value(dialect, hour_floor(start)))
        tenants = f"SELECT DISTINCT tenant FROM {table} WHERE {bucket} = {hour}"
        where += f" AND tenant IN ({tenants})" if dialect == "sqlite" else f" AND tenant = ANY (ARRAY({tenants}))"
    exprs = [GROUP_EXPR[dialect][name] for name in query.group_by]
    return f"SELECT {_columns(exprs, _RAW_VALUES[dialect])} FROM ledger WHERE {where}"
