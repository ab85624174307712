"""Several workers: each worker's lock-free counters and histograms, copied into its multiprocess files.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``sluicegate serve --workers N``) a scrape
reaches one worker, which adds up the mmap files of all of them
(``MultiProcessCollector``). prometheus_client's own classes write those files
on every change, under a lock, a few microseconds a value and a dozen values a
request. Instead each worker records into ``router.metrics_fast``'s children
as a single process does, and a ``FileMirror`` copies their totals into its
files: every ``REFRESH_S`` with the live figures (``router.metrics_live``),
in the scraped worker just before it renders, and once more when the worker
stops. So a scrape shows the other workers' counts as of at most a second
ago, and a worker that is killed loses at most its last second of counts;
one that stops cleanly loses none.

What lands in the files is what prometheus_client's ``Counter`` and
``Histogram`` would have written: the same keys (a counter's ``_total``
sample; a histogram's per-bucket counts under ``le``, and its ``_sum``),
values only ever set to this process's totals. A value found in the file when
it is first written (a process of the same pid that came before, as
prometheus_client reads it too) is kept as a base the totals add to.
Only changed values are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import values
from prometheus_client.registry import CollectorRegistry

from router.metrics_fast import FastCounter, FastCounterChild, FastHistogram, FastHistogramChild, fast_families

__all__ = ["FileMirror", "writes_files"]


def writes_files() -> bool:
    """Whether prometheus_client writes multiprocess files in this process.

    It decides when it is first imported, from ``PROMETHEUS_MULTIPROC_DIR``: set
    by ``sluicegate serve`` before it starts several workers."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class _CounterCopy:
    __slots__ = ("base", "child", "value", "written")

    def __init__(self, family: FastCounter, labelvalues: Sequence[str], child: FastCounterChild) -> None:
        self.child = child
        name = family._name
        self.value: Any = values.ValueClass("counter", name, f"{name}_total", family._labelnames, tuple(labelvalues), family._documentation)
        self.base: float = self.value.get()
        self.written: float | None = None

    def flush(self) -> None:
        total = self.child.value
        if total != self.written:
            self.value.set(self.base + total)
            self.written = total


class _HistogramCopy:
    __slots__ = ("bases", "buckets", "child", "sum", "sum_base", "written", "written_sum")

    def __init__(self, family: FastHistogram, labelvalues: Sequence[str], child: FastHistogramChild) -> None:
        self.child = child
        name, names, doc, labels = family._name, family._labelnames, family._documentation, tuple(labelvalues)
        self.sum: Any = values.ValueClass("histogram", name, f"{name}_sum", names, labels, doc)
        self.buckets: list[Any] = [
            values.ValueClass("histogram", name, f"{name}_bucket", (*names, "le"), (*labels, le), doc) for le in family._le
        ]
        self.sum_base: float = self.sum.get()
        self.bases: list[float] = [bucket.get() for bucket in self.buckets]
        self.written: list[int | None] = [None] * len(self.buckets)
        self.written_sum: float | None = None

    def flush(self) -> None:
        child = self.child
        counts, total = list(child.counts), child.sum  # copies: a scrape may run on another thread
        written = self.written
        for i, count in enumerate(counts):
            if count != written[i]:
                self.buckets[i].set(self.bases[i] + count)
                written[i] = count
        if total != self.written_sum:
            self.sum.set(self.sum_base + total)
            self.written_sum = total


class FileMirror:
    """Copies the fast families of one registry into this process's multiprocess files."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        # (family's id, label values) --> its copy
        self._copies: dict[tuple[int, tuple[str, ...]], _CounterCopy | _HistogramCopy] = {}

    def flush(self) -> None:
        """Write every total that changed since the last flush."""
        copies = self._copies
        for family in fast_families(self._registry):
            for labelvalues, child in family.listed():
                key = (id(family), tuple(labelvalues))
                copy = copies.get(key)
                if copy is None or copy.child is not child:
                    # First seen, or cleared and made again: what the file holds by now is the new child's base.
                    copy = copies[key] = (
                        _CounterCopy(family, labelvalues, child)
                        if isinstance(family, FastCounter)
                        else _HistogramCopy(family, labelvalues, child)
                    )
                copy.flush()
