"""Figures read from live state: engine load, breakers, queue depth, the ledger's backlog, budgets left.

With one process they are read when Prometheus scrapes, and cost nothing in
between. With several workers (``PROMETHEUS_MULTIPROC_DIR``, ``sluicegate serve
--workers N``) a scrape reaches one worker, which renders the multiprocess files
of all of them: a collector there would show that one worker's state. So each
figure is then a multiprocess gauge that every worker copies its state into
every ``REFRESH_S`` (and the scraped worker once more just before rendering),
aggregated across workers as the figure says: added up (``livesum``: requests
each worker's engines run), or the largest or smallest (``livemax``: a breaker
open in any worker; ``livemin``: what the most recent worker saw of a budget).
A worker that stops cleanly removes its live files (``close``); one that dies
leaves its last figures until the directory is cleaned (a new ``serve`` makes
a fresh one).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import Gauge, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from router.metrics_mirror import FileMirror

log = logging.getLogger("sluicegate.metrics")

# How often each worker copies its live figures into the shared files.
REFRESH_S = 1.0

Mode = Literal["livesum", "livemax", "livemin"]
# label values --> value
Reading = Iterable[tuple[tuple[str, ...], float]]


@dataclass(frozen=True, slots=True)
class LiveFigure:
    name: str
    documentation: str
    labelnames: tuple[str, ...]
    # How workers' figures combine (several workers only).
    mode: Mode
    read: Callable[[], Reading]


@dataclass(slots=True)
class _Copy:
    """A figure's multiprocess gauge and the label values it has written."""

    figure: LiveFigure
    # Made at the first copy, not before: a gauge without labels writes 0 to this worker's file as it is
    # made, which a worker still starting up would show as its figure (a ledger store "down", say).
    gauge: Gauge | None = None
    seen: set[tuple[str, ...]] = field(default_factory=set)

    def made(self) -> Gauge:
        if self.gauge is None:
            figure = self.figure
            self.gauge = Gauge(figure.name, figure.documentation, figure.labelnames, registry=None, multiprocess_mode=figure.mode)
        return self.gauge


class LiveFigures(Collector):
    """Read at scrape time in one process; copied into multiprocess gauges with several."""

    def __init__(self, registry: CollectorRegistry, multiproc_dir: str | None, mirror: FileMirror | None = None) -> None:
        """``mirror``: the worker's counters and histograms, copied into its files with the figures (several workers)."""
        self.figures: list[LiveFigure] = []
        self._dir = multiproc_dir
        self._copies: list[_Copy] | None = None if multiproc_dir is None else []
        self._mirror = mirror
        self._task: asyncio.Task[None] | None = None
        if multiproc_dir is None:
            registry.register(self)

    def add(self, figure: LiveFigure) -> None:
        self.figures.append(figure)
        if self._copies is not None:
            self._copies.append(_Copy(figure))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for figure in self.figures:
            family = GaugeMetricFamily(figure.name, figure.documentation, labels=figure.labelnames)
            for labels, value in figure.read():
                family.add_metric(labels, value)
            yield family

    def refresh(self) -> None:
        """Copy every figure into its multiprocess gauge, and the counts into their files (several workers only)."""
        self.flush()
        for copy in self._copies or ():
            gauge = copy.made()
            if not copy.figure.labelnames:
                for _, value in copy.figure.read():
                    gauge.set(value)
                continue
            current = dict(copy.figure.read())
            for labels in copy.seen - current.keys():
                # Gone from this worker (a deployment a reload removed): it no longer adds anything.
                gauge.labels(*labels).set(0.0)
            for labels, value in current.items():
                gauge.labels(*labels).set(value)
            copy.seen.update(current)

    def start(self) -> None:
        """Keep the copies fresh while the event loop runs (several workers only)."""
        if (self._copies or self._mirror is not None) and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="metrics-refresh")

    async def _run(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:  # a figure that fails to read must not end the refreshes
                log.exception("metrics: refreshing live figures failed")
            await asyncio.sleep(REFRESH_S)

    def flush(self) -> None:
        """Copy the counts into the files now (several workers only): what a worker stopping still recorded."""
        if self._mirror is not None:
            self._mirror.flush()

    def close(self) -> None:
        """Stop refreshing and take this worker's live figures out of the shared files (the counts stay)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.flush()
        if self._dir is not None:
            multiprocess.mark_process_dead(os.getpid(), self._dir)  # type: ignore[no-untyped-call]
