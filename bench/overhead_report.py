"""The overhead benchmark's figures: medians over rounds, ratios within a round, the table."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench.overhead_targets import LABELS


@dataclass(frozen=True, slots=True)
class Row:
    target: str
    mode: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    # Server CPU time (user + system) per request: steadier than req/s on a busy machine.
    cpu_us: float = 0.0


def median_rows(rounds: list[list[Row]]) -> list[Row]:
    """Each (target, mode)'s median figures over the rounds; errors are summed."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for rows in rounds:
        for row in rows:
            groups.setdefault((row.target, row.mode), []).append(row)
    return [
        Row(
            target,
            mode,
            rps=statistics.median(r.rps for r in group),
            p50_ms=statistics.median(r.p50_ms for r in group),
            p99_ms=statistics.median(r.p99_ms for r in group),
            errors=sum(r.errors for r in group),
            cpu_us=round(statistics.median(r.cpu_us for r in group), 1),
        )
        for (target, mode), group in groups.items()
    ]


def _ratio(rows: list[Row], target: str, base: str, metric: str) -> dict[str, float]:
    values = {(r.target, r.mode): getattr(r, metric) for r in rows}
    out = {}
    for mode in ("non-stream", "stream"):
        floor, ours = values.get((LABELS.get(base, base), mode)), values.get((LABELS.get(target, target), mode))
        if floor and ours:
            out[mode] = round(100 * ours / floor, 1)
    return out


def percent_of_passthrough(rows: list[Row], target: str = "sluicegate", base: str = "passthrough") -> dict[str, float]:
    return _ratio(rows, target, base, "rps")


def cpu_ratio(rows: list[Row], target: str, base: str) -> dict[str, float]:
    """Server CPU per request of ``target`` as % of ``base``'s: the cost of the added work."""
    return _ratio(rows, target, base, "cpu_us")


def paired(rounds: list[list[Row]], target: str, base: str, metric: str) -> dict[str, tuple[float, float, float]]:
    """A ratio taken within each round: mode --> (median, lowest, highest) over the rounds."""
    per_mode: dict[str, list[float]] = {}
    for rows in rounds:
        for mode, value in _ratio(rows, target, base, metric).items():
            per_mode.setdefault(mode, []).append(value)
    return {mode: (round(statistics.median(v), 1), min(v), max(v)) for mode, v in per_mode.items()}


# (target, base, what the req/s ratio says, what the CPU ratio says)
_COMPARISONS = (
    ("sluicegate", "passthrough", "sluicegate req/s as % of passthrough", "sluicegate CPU/req as % of passthrough"),
    ("sluicegate-all", "passthrough", "full pipeline (sg+all) req/s as % of passthrough", "full pipeline CPU/req as % of passthrough"),  # noqa: E501
    ("sluicegate-twin", "sluicegate", "twin (no difference), req/s as % of sluicegate", "twin CPU/req as % of sluicegate"),
    ("sluicegate-limits", "sluicegate", "with limits, req/s as % of sluicegate", "limits CPU/req as % of sluicegate"),
    ("sluicegate-budgets", "sluicegate", "with budgets+ledger, req/s as % of sluicegate", "budgets+ledger CPU/req as % of sluicegate"),
    (
        "sluicegate-all", "sluicegate", "with limits+budgets+ledger, req/s as % of sluicegate",
        "limits+budgets+ledger CPU/req as % of sluicegate",
    ),
    (
        "sluicegate-all-quiet", "sluicegate-all", "full pipeline without its access log, req/s as % of sg+all",
        "full pipeline without its access log, CPU/req as % of sg+all",
    ),
)


def _ranges(rounds: list[list[Row]]) -> dict[tuple[str, str], str]:
    """Each (target, mode)'s lowest and highest req/s and CPU per request over the rounds."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for rows in rounds:
        for row in rows:
            groups.setdefault((row.target, row.mode), []).append(row)
    return {
        key: f"{min(r.rps for r in g):.0f}-{max(r.rps for r in g):.0f}  {min(r.cpu_us for r in g):.0f}-{max(r.cpu_us for r in g):.0f}"
        for key, g in groups.items()
    }


def render(rounds: list[list[Row]]) -> str:
    rows = median_rows(rounds)
    ranges = _ranges(rounds)
    head = f"{'target':<18} {'mode':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} {'errors':>7}"
    if len(rounds) > 1:
        head += "  range: req/s  CPU us"
    lines = [head]
    lines += [
        f"{r.target:<18} {r.mode:<10} {r.rps:9.1f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.cpu_us:11.1f} {r.errors:7d}"
        + (f"  {ranges[(r.target, r.mode)]}" if len(rounds) > 1 else "")
        for r in rows
    ]
    if len(rounds) > 1:
        lines.append(f"medians of {len(rounds)} rounds; ratios: median within-round ratio [lowest-highest]")
    for metric, column in (("rps", 2), ("cpu_us", 3)):
        for comparison in _COMPARISONS:
            ratio = paired(rounds, comparison[0], comparison[1], metric)
            if ratio:
                parts = [
                    f"{mode} {mid:.1f}%" + (f" [{low:.1f}-{high:.1f}]" if len(rounds) > 1 else "")
                    for mode, (mid, low, high) in ratio.items()
                ]
                lines.append(f"{comparison[column]}: " + ", ".join(parts))
    return "\n".join(lines)
