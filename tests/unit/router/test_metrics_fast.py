"""The lock-free counters and histograms expose what prometheus_client's would, byte for byte, in both formats.

Each case records the same into a prometheus_client instrument and a fast one
(``time.time`` fixed, so ``_created`` and exemplar timestamps agree) and
compares the text exposition and the OpenMetrics one.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, enable_created_metrics, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from core.principal import Principal
from router.context import RequestContext
from router.gateway import Gateway
from router.metrics import Metrics
from router.metrics_fast import FastCounter, FastHistogram, counter, histogram
from serving.base import Usage
from tests.conftest import make_config

NOW = 1_700_000_000.25
TRACE = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}
BUCKETS = (0.1, 1, 2.5, 10)

Record = Callable[[Any], None]


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: NOW)


def expositions(registry: CollectorRegistry) -> tuple[bytes, bytes]:
    return generate_latest(registry), generate_openmetrics(registry)  # type: ignore[no-untyped-call]


def both_counters(record: Record, labelnames: tuple[str, ...] = ("route", "status")) -> tuple[CollectorRegistry, CollectorRegistry]:
    slow, fast = CollectorRegistry(), CollectorRegistry()
    record(Counter("things_total", "Things, by route and status.", labelnames, registry=slow))
    record(FastCounter("things_total", "Things, by route and status.", labelnames, fast))
    return slow, fast


def both_histograms(record: Record, buckets: tuple[float, ...] = BUCKETS) -> tuple[CollectorRegistry, CollectorRegistry]:
    slow, fast = CollectorRegistry(), CollectorRegistry()
    record(Histogram("took_seconds", "Time taken, by model.", ("model", "kind"), buckets=buckets, registry=slow))
    record(FastHistogram("took_seconds", "Time taken, by model.", ("model", "kind"), buckets, fast))
    return slow, fast


def assert_same(slow: CollectorRegistry, fast: CollectorRegistry) -> tuple[bytes, bytes]:
    text, openmetrics = expositions(slow)
    assert expositions(fast) == (text, openmetrics)
    return text, openmetrics


def test_a_counter_exposes_what_prometheus_client_does() -> None:
    def record(family: Any) -> None:
        family.labels("chat", "200").inc()
        family.labels("chat", "200").inc(41)
        family.labels("chat", 404).inc(0.25)  # not a string: as prometheus_client, str() of it
        family.labels(status="500", route="embed").inc(2)
        family.labels("idle", "200")  # made, never counted: a zero

    text, openmetrics = assert_same(*both_counters(record))
    assert b'things_total{route="chat",status="200"} 42.0' in text
    assert b"# TYPE things_created gauge" in text
    assert b'things_created{route="chat",status="404"} 1.70000000025e+09' in openmetrics


def test_a_counter_exemplar_is_exposed_as_prometheus_client_does() -> None:
    def record(family: Any) -> None:
        family.labels("chat", "200").inc(3, {"trace_id": "a" * 32})
        family.labels("chat", "200").inc(2, TRACE)  # the latest wins
        family.labels("chat", "500").inc(1)

    _, openmetrics = assert_same(*both_counters(record))
    assert f'}} 5.0 # {{trace_id="{TRACE["trace_id"]}"}} 2.0 {NOW}'.encode() in openmetrics


def test_a_counter_refuses_to_go_down() -> None:
    fast = FastCounter("things_total", "Things.", ("route",), None)
    with pytest.raises(ValueError, match="non-negative"):
        fast.labels("chat").inc(-1)
    assert fast.labels("chat").value == 0


def test_histogram_buckets_at_over_and_under_the_bounds() -> None:
    """``le`` is inclusive: a value on a bound counts in that bound's bucket; past the last, only in +Inf."""
    values = (0.1, 1, 1.0000001, 2.5, 10, 10.5, 1e9, math.inf, 0, 0.0, -3, 0.099)

    def record(family: Any) -> None:
        child = family.labels("m", "chat")
        for value in values:
            child.observe(value)
        family.labels("empty", "chat")

    text, _ = assert_same(*both_histograms(record))
    assert b'took_seconds_bucket{kind="chat",le="0.1",model="m"} 5.0' in text  # 0.1, 0, 0.0, -3, 0.099
    assert b'took_seconds_bucket{kind="chat",le="1.0",model="m"} 6.0' in text
    assert b'took_seconds_bucket{kind="chat",le="2.5",model="m"} 8.0' in text
    assert b'took_seconds_bucket{kind="chat",le="10.0",model="m"} 9.0' in text
    assert b'took_seconds_bucket{kind="chat",le="+Inf",model="m"} 12.0' in text
    assert b'took_seconds_count{kind="chat",model="m"} 12.0' in text


def test_histogram_exemplars_are_the_latest_per_bucket() -> None:
    def record(family: Any) -> None:
        child = family.labels("m", "chat")
        child.observe(0.05, {"trace_id": "first"})
        child.observe(0.07, TRACE)  # replaces the first in le=0.1
        child.observe(0.08)  # none given: the bucket keeps its exemplar
        child.observe(5, {})  # an empty exemplar is none
        child.observe(100, TRACE)
        family.labels("m", "embed").observe(1)

    _, openmetrics = assert_same(*both_histograms(record))
    assert b'le="0.1",model="m"} 3.0 # {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 0.07' in openmetrics
    assert b"first" not in openmetrics


def test_an_exemplar_over_the_openmetrics_limit_is_not_exposed() -> None:
    """prometheus_client raises where it is recorded; a fast histogram records and leaves it out of the scrape."""
    registry = CollectorRegistry()
    child = FastHistogram("took_seconds", "Time.", ("model",), BUCKETS, registry).labels("m")
    child.observe(0.05, {"trace_id": "x" * 121})
    child.observe(5, TRACE)
    _, openmetrics = expositions(registry)
    assert b"x" * 121 not in openmetrics and TRACE["trace_id"].encode() in openmetrics
    assert registry.get_sample_value("took_seconds_count", {"model": "m"}) == 2


def test_a_scrape_in_another_thread_sees_whole_values() -> None:
    """The event loop records (and makes new children) while another thread scrapes: nothing raises or tears."""
    registry = CollectorRegistry()
    things = FastCounter("things_total", "Things.", ("n",), registry)
    took = FastHistogram("took_seconds", "Time.", ("n",), BUCKETS, registry)
    done = threading.Event()
    failures: list[BaseException] = []

    def scrape() -> None:
        try:
            while not done.is_set():
                for family in text_string_to_metric_families(generate_latest(registry).decode()):
                    for sample in family.samples:
                        assert sample.value >= 0 and float(sample.value).is_integer() or sample.name.endswith(("_sum", "_created"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for i in range(20_000):
            key = str(i % 500)
            things.labels(key).inc()
            took.labels(key).observe(i % 13)
    finally:
        done.set()
        scraper.join()
    assert not failures
    assert sum(registry.get_sample_value("things_total", {"n": str(n)}) or 0 for n in range(500)) == 20_000
    assert registry.get_sample_value("took_seconds_count", {"n": "7"}) == 40


def test_a_histogram_whose_bounds_start_below_zero_has_no_sum() -> None:
    def record(family: Any) -> None:
        family.labels("m", "chat").observe(-2)
        family.labels("m", "chat").observe(3)

    text, _ = assert_same(*both_histograms(record, buckets=(-5, 0, 5)))
    assert b"took_seconds_sum" not in text


def test_many_observations_sum_exactly_as_prometheus_client() -> None:
    values = [i * 0.001 + 1e-7 for i in range(20_000)]

    def record(family: Any) -> None:
        child = family.labels("m", "chat")
        for value in values:
            child.observe(value)

    slow, fast = both_histograms(record)
    assert_same(slow, fast)
    expected = 0.0
    for value in values:
        expected += value
    labels = {"model": "m", "kind": "chat"}
    assert fast.get_sample_value("took_seconds_sum", labels) == slow.get_sample_value("took_seconds_sum", labels) == expected
    assert fast.get_sample_value("took_seconds_count", labels) == len(values)


def test_no_created_series_when_prometheus_client_is_told_so() -> None:
    def record(family: Any) -> None:
        family.labels("m", "chat").observe(1)

    disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        text, openmetrics = assert_same(*both_histograms(record))
        assert b"_created" not in text and b"_created" not in openmetrics
    finally:
        enable_created_metrics()  # type: ignore[no-untyped-call]


def test_label_mistakes_are_refused_as_prometheus_client_refuses_them() -> None:
    fast = FastCounter("things_total", "Things.", ("route", "status"), None)
    with pytest.raises(ValueError, match="count"):
        fast.labels("chat")
    with pytest.raises(ValueError, match="names"):
        fast.labels(route="chat")
    with pytest.raises(ValueError):
        FastHistogram("took_seconds", "Time.", ("le",), BUCKETS, None)
    with pytest.raises(ValueError, match="sorted"):
        FastHistogram("took_seconds", "Time.", ("model",), (2, 1), None)
    registry = CollectorRegistry()
    FastCounter("things_total", "Things.", ("route",), registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Counter("things", "Things.", ("route",), registry=registry)


def test_children_are_removed_and_cleared_as_prometheus_clients_are() -> None:
    def record(family: Any) -> None:
        for route in ("a", "b", "c"):
            family.labels(route, "200").inc()
        family.remove("b", "200")

    assert_same(*both_counters(record))
    registry = CollectorRegistry()
    fast = FastCounter("things_total", "Things.", ("route",), registry)
    fast.labels("a").inc()
    fast.clear()
    assert registry.get_sample_value("things_total", {"route": "a"}) is None


def test_the_factories_pick_prometheus_client_unless_fast() -> None:
    registry = CollectorRegistry()
    assert type(counter("a_total", "A.", ("x",), registry, fast=False)) is Counter
    assert type(histogram("b_seconds", "B.", ("x",), BUCKETS, registry, fast=False)) is Histogram
    assert type(counter("c_total", "C.", ("x",), registry, fast=True)) is FastCounter
    assert type(histogram("d_seconds", "D.", ("x",), BUCKETS, registry, fast=True)) is FastHistogram


# --- Metrics itself: fast in one process and in a worker (tests/unit/router/test_metrics_mirror.py); prometheus_client's
# own classes only when given a directory in a process where prometheus_client writes no files.

# Per request (and per hook, error, refusal): the families single-process mode records without locks.
FAST_FAMILIES = (
    "requests", "latency", "ttft", "upstream_errors", "tokens", "unknown_fields", "pii_entities",
    "soft_budget_exceeded", "config_reloads", "canary_decisions", "shadow_requests", "plugin_hook_seconds", "plugin_errors",
)  # fmt: skip
GENAI_FAMILIES = ("token_usage", "duration", "ttft", "tpot")
SPEND_FAMILIES = ("cost", "rejections", "queue_wait")


def families(metrics: Metrics) -> Iterator[object]:
    yield from (getattr(metrics, name) for name in FAST_FAMILIES)
    yield from (getattr(metrics.genai, name) for name in GENAI_FAMILIES)
    yield from (getattr(metrics.spend, name) for name in SPEND_FAMILIES)


def test_one_process_records_without_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics = Metrics()
    assert metrics.multiproc_dir is None and metrics.genai.exemplars
    assert all(isinstance(family, FastCounter | FastHistogram) for family in families(metrics))


def test_a_directory_without_multiprocess_files_keeps_prometheus_clients_own_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prometheus_client chose its in-memory values at import (the variable set since): nothing to copy files from."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for metrics in (Metrics(), Metrics(multiproc_dir=str(tmp_path))):
        assert metrics.multiproc_dir == str(tmp_path)
        assert all(type(family) in (Counter, Histogram) for family in families(metrics))


def _contexts(gateway: Gateway) -> Iterator[RequestContext]:
    snapshot = gateway.snapshot
    deployment = snapshot.router.get("fake-model").tiers[0][0]
    principal = Principal(tenant="tenant-a", key_id="key-a")

    def ctx(**fields: Any) -> RequestContext:
        made = RequestContext(
            request_id="r", snapshot=snapshot, principal=principal, kind="chat", route="chat", alias="fake-model", body={}
        )
        for name, value in fields.items():
            setattr(made, name, value)
        return made

    served = {"plan": [deployment], "served": deployment, "deployment": deployment.name, "attempted": True}
    usage = Usage(prompt_tokens=12, completion_tokens=34, total_tokens=46)
    yield ctx(**served, usage=usage, elapsed=0.0123, cost=123_456_789)
    yield ctx(**served, usage=usage, elapsed=0.5, ttft=0.04, cost=7, trace_id=TRACE["trace_id"])
    yield ctx(**served, kind="embedding", route="embeddings", usage=Usage(prompt_tokens=5), elapsed=0.01, trace_id="b" * 32)
    yield ctx(plan=[deployment], deployment=deployment.name, attempted=True, status=502, error="bad_gateway", elapsed=1.0)
    yield ctx(alias="made-up", status=404, error="model_not_found", elapsed=0.001)
    yield ctx(status=429, error="rate_limit_exceeded", refused="concurrency", elapsed=0.0001)
    yield ctx(**served, usage=usage, status=200, error="budget_cutoff", elapsed=400.0, ttft=0.001)


def test_metrics_exposes_what_prometheus_clients_instruments_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same requests recorded by both kinds: the same exposition, exemplars included."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    gateway = Gateway(make_config("http://127.0.0.1:9/v1"))
    fast = Metrics()
    # Given a directory but not run as a worker: prometheus_client's classes, in memory.
    slow = Metrics(multiproc_dir=str(tmp_path))
    slow.genai.exemplars = True
    for metrics in (fast, slow):
        for ctx in _contexts(gateway):
            metrics.finished(ctx)
            metrics.settled(ctx)
        metrics.ttft.labels("fake-model", "normal").observe(0.02)
        metrics.observe("messages", "-", 400, 0.003)
        metrics.count_tokens("fake-model", 1, 2)
        metrics.spend.queue_observer("fake-model").waited(0.0)
    fast.registry.unregister(fast.live)  # the live figures are read at scrape time, not recorded: not compared
    text, openmetrics = assert_same(slow.registry, fast.registry)
    assert b'sluicegate_requests_total{model="-",route="chat",status="404"} 1.0' in text
    assert b'sluicegate_cost_usd_total{deployment="normal",model="fake-model",tenant="tenant-a"} 0.000123456796' in text
    assert TRACE["trace_id"].encode() in openmetrics and b"b" * 32 in openmetrics
    assert fast.registry.get_sample_value("sluicegate_rejections_total", {"tenant": "tenant-a", "reason": "concurrency"}) == 1
    assert fast.registry.get_sample_value("sluicegate_rejections_total", {"tenant": "tenant-a", "reason": "budget_cutoff"}) == 1
