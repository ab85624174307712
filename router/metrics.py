"""Prometheus metrics. Label children are cached so recording costs a dict lookup."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

__all__ = ["Metrics", "PROMETHEUS_CONTENT_TYPE"]

# deployment --> (running, waiting), read at scrape time.
LoadSource = Callable[[], dict[str, tuple[int, int]]]


class _EngineLoad(Collector):
    """Engine queue figures for autoscaling (KEDA reads them through Prometheus)."""

    def __init__(self, source: LoadSource) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        running = GaugeMetricFamily("sluicegate_engine_running_requests", "Requests an engine is running.", labels=["deployment"])
        waiting = GaugeMetricFamily("sluicegate_engine_waiting_requests", "Requests waiting for an engine.", labels=["deployment"])
        for name, (run, wait) in self._source().items():
            running.add_metric([name], run)
            waiting.add_metric([name], wait)
        yield running
        yield waiting


BreakerSource = Callable[[], dict[str, bool]]


class _BreakerState(Collector):
    """Whether each deployment's circuit breaker is open (1) or not (0), read at scrape time."""

    def __init__(self, source: BreakerSource) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("sluicegate_breaker_open", "1 while a deployment's circuit breaker is open.", labels=["deployment"])
        for name, is_open in self._source().items():
            family.add_metric([name], 1.0 if is_open else 0.0)
        yield family


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sluicegate_requests_total", "Requests answered, by route, model alias and HTTP status.",
            ("route", "model", "status"), registry=r,
        )
        self.latency = Histogram(
            "sluicegate_request_duration_seconds", "Time from request to last byte, by route, model and status.",
            ("route", "model", "status"), buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "sluicegate_time_to_first_token_seconds", "Time to the first streamed chunk, by model and deployment.",
            ("model", "deployment"), buckets=LATENCY_BUCKETS, registry=r,
        )
        self.upstream_errors = Counter(
            "sluicegate_upstream_errors_total", "Upstream failures, by deployment and error code.",
            ("deployment", "code"), registry=r,
        )
        self.tokens = Counter(
            "sluicegate_tokens_total", "Tokens served, by model alias and kind (prompt/completion).",
            ("model", "kind"), registry=r,
        )
        self.unknown_fields = Counter(
            "sluicegate_unknown_request_fields_total", "Request fields the gateway passed through without modelling.",
            ("route",), registry=r,
        )
        self.in_flight = Gauge(
            "sluicegate_in_flight_requests", "Requests being served now.", registry=r, multiprocess_mode="livesum",
        )
        self.pii_entities = Counter(
            "sluicegate_pii_entities_total", "Personal data found in requests, by entity type (never values).",
            ("entity",), registry=r,
        )
        self.pii_failures = Counter(
            "sluicegate_pii_analyzer_failures_total", "Requests whose PII scan failed.", registry=r,
        )
        self.soft_budget_exceeded = Counter(
            "sluicegate_soft_budget_exceeded_total", "Requests admitted while over a soft budget, by tenant.",
            ("tenant",), registry=r,
        )
        self.config_version = Gauge(
            "sluicegate_config_version", "The live config version this replica serves.", registry=r, multiprocess_mode="max",
        )
        self.config_reloads = Counter(
            "sluicegate_config_reloads_total", "Config versions this replica tried to apply, by result (applied, invalid, failed).",
            ("result",), registry=r,
        )
        self.config_apply_latency = Histogram(
            "sluicegate_config_apply_latency_seconds", "From a version's commit to this replica serving it.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r,
        )
        self.canary_weight = Gauge(
            "sluicegate_canary_weight_percent", "Share of an alias's live traffic its canary serves, in percent.",
            ("model",), registry=r, multiprocess_mode="max",
        )
        self.canary_decisions = Counter(
            "sluicegate_canary_decisions_total", "Canary decisions written (step, promote, rollback, ...), by alias.",
            ("model", "action"), registry=r,
        )
        self.shadow_requests = Counter(
            "sluicegate_shadow_requests_total", "Requests mirrored to a canary candidate, by alias and result (ok, error, shed).",
            ("model", "result"), registry=r,
        )
        self.plugin_hook_seconds = Histogram(
            "sluicegate_plugin_hook_seconds", "Time in plugin hooks, by plugin and hook.", ("plugin", "hook"), registry=r,
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
        )
        self.plugin_errors = Counter(
            "sluicegate_plugin_errors_total", "Plugin hooks that raised or timed out, by plugin, hook and reason (error, timeout).",
            ("plugin", "hook", "reason"), registry=r,
        )
        self.responses_expired = Counter(
            "sluicegate_responses_expired_total", "Stored responses deleted by the expiry sweep once past their retention.",
            registry=r,
        )
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self._token_children: dict[str, tuple[Counter, Counter]] = {}

    def track_engine_load(self, source: LoadSource) -> None:
        self.registry.register(_EngineLoad(source))

    def track_breakers(self, source: BreakerSource) -> None:
        self.registry.register(_BreakerState(source))

    def observe(self, route: str, model: str, status: int, seconds: float) -> None:
        key = (route, model, str(status))
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.latency.labels(*key))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def count_tokens(self, model: str, prompt: int, completion: int) -> None:
        children = self._token_children.get(model)
        if children is None:
            children = (self.tokens.labels(model, "prompt"), self.tokens.labels(model, "completion"))
            self._token_children[model] = children
        children[0].inc(prompt)
        children[1].inc(completion)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Several workers: aggregate every worker's files, not just this one's.
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
