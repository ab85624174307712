"""Charts as inline SVG rendered on the server: no script, no style attribute, only presentation attributes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from markupsafe import Markup, escape

WIDTH = 640
BAR = 22
GAP = 6
LABEL_W = 180
VALUE_W = 110


def hbars(items: Sequence[tuple[str, float]], fmt: Callable[[float], str], *, title: str) -> Markup:
    """Horizontal bars, one per (label, value), longest for the largest value."""
    if not items:
        return Markup('<p class="empty">No data for this period.</p>')
    top = max(v for _, v in items) or 1.0
    span = WIDTH - LABEL_W - VALUE_W
    height = len(items) * (BAR + GAP) + GAP
    rows = []
    for i, (label, value) in enumerate(items):
        y = GAP + i * (BAR + GAP)
        w = max(1.0, span * value / top) if value > 0 else 0.0
        rows.append(
            f'<text x="{LABEL_W - 8}" y="{y + BAR * 0.7:.1f}" text-anchor="end" class="label">{escape(_clip(label))}</text>'
            f'<rect x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR}" class="bar">'
            f"<title>{escape(label)}: {escape(fmt(value))}</title></rect>"
            f'<text x="{LABEL_W + w + 6:.1f}" y="{y + BAR * 0.7:.1f}" class="value">{escape(fmt(value))}</text>'
        )
    return Markup(
        f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}">'
        f"<title>{escape(title)}</title>{''.join(rows)}</svg>"
    )


def columns(items: Sequence[tuple[str, float]], fmt: Callable[[float], str], *, title: str, height: int = 180, width: int = 1100) -> Markup:
    """Vertical columns over time (label under the first, middle and last)."""
    if not items:
        return Markup('<p class="empty">No data for this period.</p>')
    top = max(v for _, v in items) or 1.0
    step = width / len(items)
    plot = height - 24
    cols = []
    for i, (label, value) in enumerate(items):
        h = plot * value / top if value > 0 else 0.0
        x = i * step + 1
        cols.append(
            f'<rect x="{x:.1f}" y="{plot - h:.1f}" width="{max(1.0, step - 2):.1f}" height="{h:.1f}" class="bar">'
            f"<title>{escape(label)}: {escape(fmt(value))}</title></rect>"
        )
    marks = {0, len(items) // 2, len(items) - 1}
    for i in sorted(marks):
        anchor = "start" if i == 0 else "end" if i == len(items) - 1 else "middle"
        x = i * step + (0 if anchor == "start" else step if anchor == "end" else step / 2)
        cols.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="{anchor}" class="label">{escape(items[i][0])}</text>')
    return Markup(
        f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
        f"<title>{escape(title)}</title>{''.join(cols)}</svg>"
    )


def usd(pico: float) -> str:
    """Dollars from pico-USD: cents for large amounts, six decimals for the small ones a request costs."""
    dollars = pico / 1e12
    return f"${dollars:,.2f}" if dollars >= 100 else f"${dollars:,.6f}"


def days(start: datetime, end: datetime, most: int = 366) -> list[str]:
    """Every UTC day from ``start`` to ``end`` (the last ``most``), as the ledger names them."""
    first, last = start.astimezone(UTC).date(), end.astimezone(UTC).date()
    count = min(most, (last - first).days + 1)
    return [(last - timedelta(days=n)).isoformat() for n in reversed(range(max(0, count)))]


def hours(now: datetime, count: int = 24) -> list[str]:
    """The last ``count`` UTC hours up to ``now``, as the ledger names them."""
    top = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return [(top - timedelta(hours=n)).strftime("%Y-%m-%dT%H:00:00Z") for n in reversed(range(count))]


def series(keys: Sequence[str], rows: Sequence[Mapping[str, Any]], key: str, value: str) -> list[tuple[str, float]]:
    """One point per key, zero where ``rows`` has none."""
    found = {str(r[key]): float(r[value]) for r in rows}
    return [(k, found.get(k, 0.0)) for k in keys]


def count(value: float) -> str:
    return f"{int(value):,}"


def _clip(label: str, most: int = 26) -> str:
    return label if len(label) <= most else label[: most - 1] + "…"
