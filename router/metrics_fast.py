"""Counters and histograms that record without locks, for one process: what every request records.

prometheus_client's ``Counter.inc`` takes a lock, and its ``Histogram.observe``
one per value it touches (the bucket, the sum) after walking the bucket bounds
in Python: some thousands of instructions for each of the half dozen figures a
request records. Here a counter child is a float it adds to, and a histogram
child a list of per-bucket counts (``bisect`` finds the bucket), a float sum,
and per bucket the exemplar (value, labels, timestamp) of its latest
observation, kept only when one is given.

Threads: the gateway records from one thread, its event loop's; these children
assume a single writer (two threads recording into one child could lose
updates). A scrape may run in another thread: it reads plain floats and copies
of the count lists, so it may see an observation in its bucket before it is in
the sum, which Prometheus tolerates, never a corrupted value. New label
children are made under a lock the scrape takes to list them.

What they expose is what prometheus_client's ``Counter`` and ``Histogram``
expose, byte for byte in both text formats: the same families, samples, label
order, ``le`` values, ``_created`` (unless prometheus_client's
``disable_created_metrics`` turned it off) and exemplars. Two differences, in
what is never recorded by the gateway: an exemplar over the 128-character limit
is dropped at scrape time instead of raising where it is recorded, and a NaN
observation counts in the first bucket instead of none.

Multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) adds up the mmap files each
worker writes: a worker records into these children too, and
``router.metrics_mirror`` copies their totals into its files (``fast_families``
lists what it copies). ``counter`` and ``histogram`` make prometheus_client's
own classes unless asked for the fast kind.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from bisect import bisect_left
from collections.abc import Sequence
from threading import Lock
from typing import Any, Protocol
from weakref import WeakKeyDictionary

import prometheus_client.metrics as _client
from prometheus_client import Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Exemplar
from prometheus_client.utils import INF, floatToGoString

__all__ = [
    "CounterChild",
    "CounterFamily",
    "FastCounter",
    "FastHistogram",
    "HistogramChild",
    "HistogramFamily",
    "counter",
    "fast_families",
    "histogram",
]

# Exemplar labels longer than this (names and values, in characters) are not exposed (OpenMetrics' limit).
EXEMPLAR_MAX_RUNES = 128

# (observed value, exemplar labels, unix time)
_Exemplar = tuple[float, dict[str, str], float]


class CounterChild(Protocol):
    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None: ...


class HistogramChild(Protocol):
    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None: ...


class CounterFamily(Protocol):
    """A labelled counter: prometheus_client's ``Counter`` or a ``FastCounter``."""

    def labels(self, *labelvalues: str) -> CounterChild: ...


class HistogramFamily(Protocol):
    """A labelled histogram: prometheus_client's ``Histogram`` or a ``FastHistogram``."""

    def labels(self, *labelvalues: str) -> HistogramChild: ...


def counter(name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry, *, fast: bool) -> CounterFamily:
    """A labelled counter: lock-free if ``fast`` (one process), else prometheus_client's (multiprocess-capable)."""
    if fast:
        return FastCounter(name, documentation, labelnames, registry)
    return Counter(name, documentation, labelnames, registry=registry)


def histogram(
    name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float], registry: CollectorRegistry, *, fast: bool
) -> HistogramFamily:
    """A labelled histogram: lock-free if ``fast`` (one process), else prometheus_client's (multiprocess-capable)."""
    if fast:
        return FastHistogram(name, documentation, labelnames, buckets, registry)
    return Histogram(name, documentation, labelnames, buckets=buckets, registry=registry)


class FastCounterChild:
    __slots__ = ("created", "exemplar", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.exemplar: _Exemplar | None = None
        self.created = time.time()

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount
        if exemplar:
            self.exemplar = (amount, exemplar, time.time())


class FastHistogramChild:
    __slots__ = ("_bounds", "counts", "created", "exemplars", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self._bounds = bounds
        # counts[i]: observations in (bounds[i - 1], bounds[i]]; the last bound is +Inf.
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.exemplars: list[_Exemplar | None] = [None] * len(bounds)
        self.created = time.time()

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        # The first bound >= amount: the bucket `le` counts amount <= bound in.
        i = bisect_left(self._bounds, amount)
        self.counts[i] += 1
        self.sum += amount
        if exemplar:
            self.exemplars[i] = (amount, exemplar, time.time())


class _Family(MetricWrapperBase):
    """Label values --> child; registered with ``registry`` as a collector.

    A ``MetricWrapperBase`` as prometheus_client's metrics are (what tools that list a registry's
    metrics look for: ``_type``, ``_name``, ``_labelnames``; ``remove`` and ``clear`` work), but
    its ``__init__`` is not run: it would make prometheus_client's locked values.
    """

    _type = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry | None) -> None:
        if not labelnames:
            raise ValueError(f"{name}: a fast metric needs label names")
        self._name = self._original_name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._labelvalues = ()
        self._namespace = self._subsystem = self._unit = ""
        self._kwargs = {}
        self._lock = Lock()
        # label values --> child
        self._metrics: dict[Sequence[str], Any] = {}
        if registry is not None:
            registry.register(self)
            _REGISTERED.setdefault(registry, []).append(self)

    def _child(self, labelvalues: tuple[object, ...], labelkwargs: dict[str, object]) -> Any:
        """The child of label values not seen before, or not given as strings (as prometheus_client takes them)."""
        if labelvalues and labelkwargs:
            raise ValueError("Can't pass both *args and **kwargs")
        if labelkwargs:
            if sorted(labelkwargs) != sorted(self._labelnames):
                raise ValueError("Incorrect label names")
            key = tuple(str(labelkwargs[name]) for name in self._labelnames)
        else:
            if len(labelvalues) != len(self._labelnames):
                raise ValueError("Incorrect label count")
            key = tuple(str(value) for value in labelvalues)
        with self._lock:
            child = self._metrics.get(key)
            if child is None:
                child = self._metrics[key] = self._new_child()
        return child

    @abstractmethod
    def _new_child(self) -> object:
        """A child for one new set of label values (each family says what kind)."""

    def listed(self) -> list[tuple[Sequence[str], Any]]:
        """(label values, child) of every child made so far."""
        with self._lock:
            return list(self._metrics.items())

    def describe(self) -> list[Metric]:
        return [Metric(self._name, self._documentation, self._type)]


# registry --> the fast families registered with it, in the order they were made (router.metrics_mirror copies them).
_REGISTERED: WeakKeyDictionary[CollectorRegistry, list[_Family]] = WeakKeyDictionary()


def fast_families(registry: CollectorRegistry) -> list[FastCounter | FastHistogram]:
    """The fast counters and histograms made with ``registry``."""
    return [family for family in _REGISTERED.get(registry, ()) if isinstance(family, FastCounter | FastHistogram)]


class FastCounter(_Family):
    """A labelled counter, exposed as prometheus_client's ``Counter`` of the same arguments would be."""

    _type = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry | None) -> None:
        # As prometheus_client names a counter: the family without `_total`, its sample with it.
        super().__init__(name.removesuffix("_total"), documentation, labelnames, registry)

    def labels(self, *labelvalues: object, **labelkwargs: object) -> FastCounterChild:  # type: ignore[override]
        child: FastCounterChild | None = self._metrics.get(labelvalues)  # type: ignore[arg-type]
        if child is None or labelkwargs:
            child = self._child(labelvalues, labelkwargs)
        return child

    def _new_child(self) -> FastCounterChild:
        return FastCounterChild()

    def collect(self) -> list[Metric]:
        metric = Metric(self._name, self._documentation, "counter")
        total, created = f"{self._name}_total", f"{self._name}_created"
        with_created = _client._use_created
        names = self._labelnames
        for values, child in self.listed():
            metric.add_sample(total, dict(zip(names, values)), child.value, None, _exemplar(child.exemplar))
            if with_created:
                metric.add_sample(created, dict(zip(names, values)), child.created, None, None)
        return [metric]


class FastHistogram(_Family):
    """A labelled histogram, exposed as prometheus_client's ``Histogram`` of the same arguments would be."""

    _type = "histogram"

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float], registry: CollectorRegistry | None
    ) -> None:
        if "le" in labelnames:
            raise ValueError("Invalid label metric name: le")
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("Buckets not in sorted order")
        if bounds and bounds[-1] != INF:
            bounds.append(INF)
        if len(bounds) < 2:
            raise ValueError("Must have at least two buckets")
        self._bounds = bounds
        self._le: list[str] = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry)

    def labels(self, *labelvalues: object, **labelkwargs: object) -> FastHistogramChild:  # type: ignore[override]
        child: FastHistogramChild | None = self._metrics.get(labelvalues)  # type: ignore[arg-type]
        if child is None or labelkwargs:
            child = self._child(labelvalues, labelkwargs)
        return child

    def _new_child(self) -> FastHistogramChild:
        return FastHistogramChild(self._bounds)

    def collect(self) -> list[Metric]:
        name = self._name
        metric = Metric(name, self._documentation, "histogram")
        bucket, count, total, created = f"{name}_bucket", f"{name}_count", f"{name}_sum", f"{name}_created"
        with_created, with_sum = _client._use_created, self._bounds[0] >= 0
        names, le = self._labelnames, self._le
        for values, child in self.listed():
            # Copies first: the event loop may record meanwhile (another thread scraping).
            counts, exemplars, observed = list(child.counts), list(child.exemplars), child.sum
            labels = dict(zip(names, values))
            acc = 0.0
            for i, n in enumerate(counts):
                acc += n
                metric.add_sample(bucket, {**labels, "le": le[i]}, acc, None, _exemplar(exemplars[i]))
            metric.add_sample(count, dict(labels), acc, None, None)
            if with_sum:
                metric.add_sample(total, dict(labels), observed, None, None)
            if with_created:
                metric.add_sample(created, dict(labels), child.created, None, None)
        return [metric]


def _exemplar(kept: _Exemplar | None) -> Exemplar | None:
    if kept is None:
        return None
    value, labels, timestamp = kept
    if sum(len(k) + len(v) for k, v in labels.items()) > EXEMPLAR_MAX_RUNES:
        return None
    return Exemplar(labels, value, timestamp)
