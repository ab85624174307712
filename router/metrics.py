"""Prometheus metrics. Label children are cached so recording costs a dict lookup.

Families by module: request counts and latency here; the OpenTelemetry GenAI
instruments in ``metrics_genai``; cost, budgets left, rejections and queue
waits in ``metrics_spend``; figures read from live state (engine load,
breakers, queue depth, the ledger's backlog, budgets left) in ``metrics_live``,
which also keeps them right with several workers. ``/metrics`` answers in the
OpenMetrics format (with trace-id exemplars) to a scraper that asks for it.
The labelled counters and histograms are ``metrics_fast``'s, which record
without locks and expose what prometheus_client's would; with several
workers ``metrics_mirror`` copies them into each worker's shared files.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder

from core.errors import NotFound
from router.log_writer import dropped_lines
from router.loop_lag import LoopLagProbe
from router.metrics_fast import CounterChild, HistogramChild, counter, histogram
from router.metrics_genai import UNKNOWN, GenAIMetrics
from router.metrics_live import LiveFigure, LiveFigures, Reading
from router.metrics_mirror import FileMirror, writes_files
from router.metrics_spend import BUDGET_LABELS, SpendMetrics

if TYPE_CHECKING:
    from budgets.ledger import LedgerBacklog
    from policies.routing import Alias
    from router.metrics_view import FinishedRequest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
LOOP_LAG_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OPENMETRICS = "application/openmetrics-text"

__all__ = ["PROMETHEUS_CONTENT_TYPE", "Metrics"]

# deployment --> (running, waiting), read at scrape time.
LoadSource = Callable[[], dict[str, tuple[int, int]]]
BreakerSource = Callable[[], dict[str, bool]]


class Level:
    """A figure that goes up and down with every request, read only when scraped (``LiveFigure``).

    A plain integer: a prometheus_client ``Gauge`` takes a lock on every change,
    twice per request for the requests in flight. Changed by the event loop's thread only.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, multiproc_dir: str | None = None) -> None:
        """``multiproc_dir``: where the workers' metric files are; by default ``PROMETHEUS_MULTIPROC_DIR``, if set."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiproc_dir = multiproc_dir if multiproc_dir is not None else os.environ.get(MULTIPROC_ENV) or None
        r = self.registry
        # The labelled counters and histograms record without locks (router.metrics_fast). With several workers
        # a mirror copies them into the files every worker's figures are added up from (router.metrics_mirror);
        # given a directory where prometheus_client writes no files (not started as a worker), its own classes.
        mirror = FileMirror(r) if self.multiproc_dir is not None and writes_files() else None
        fast = self.fast = self.multiproc_dir is None or mirror is not None
        self.requests = counter(
            "sluicegate_requests_total", "Requests answered, by route, model alias and HTTP status.",
            ("route", "model", "status"), r, fast=fast,
        )  # fmt: skip
        self.latency = histogram(
            "sluicegate_request_duration_seconds", "Time from request to last byte, by route, model and status.",
            ("route", "model", "status"), LATENCY_BUCKETS, r, fast=fast,
        )  # fmt: skip
        self.ttft = histogram(
            "sluicegate_time_to_first_token_seconds", "Time to the first streamed chunk, by model and deployment.",
            ("model", "deployment"), LATENCY_BUCKETS, r, fast=fast,
        )  # fmt: skip
        self.upstream_errors = counter(
            "sluicegate_upstream_errors_total", "Upstream failures, by deployment and error code.",
            ("deployment", "code"), r, fast=fast,
        )  # fmt: skip
        self.tokens = counter(
            "sluicegate_tokens_total", "Tokens served, by model alias and kind (prompt/completion).",
            ("model", "kind"), r, fast=fast,
        )  # fmt: skip
        self.unknown_fields = counter(
            "sluicegate_unknown_request_fields_total", "Request fields the gateway passed through without modelling.",
            ("route",), r, fast=fast,
        )  # fmt: skip
        # Requests being served now: the pipeline adds to it and takes from it; read as a live figure (below).
        self.in_flight = Level()
        self.pii_entities = counter(
            "sluicegate_pii_entities_total", "Personal data found in requests, by entity type (never values).",
            ("entity",), r, fast=fast,
        )  # fmt: skip
        self.pii_failures = Counter(
            "sluicegate_pii_analyzer_failures_total", "Requests whose PII scan failed.", registry=r,
        )  # fmt: skip
        self.soft_budget_exceeded = counter(
            "sluicegate_soft_budget_exceeded_total", "Requests admitted while over a soft budget, by tenant.",
            ("tenant",), r, fast=fast,
        )  # fmt: skip
        self.config_version = Gauge(
            "sluicegate_config_version", "The live config version this replica serves.", registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.config_reloads = counter(
            "sluicegate_config_reloads_total", "Config versions this replica tried to apply, by result (applied, invalid, failed).",
            ("result",), r, fast=fast,
        )  # fmt: skip
        self.config_apply_latency = Histogram(
            "sluicegate_config_apply_latency_seconds", "From a version's commit to this replica serving it.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r,
        )  # fmt: skip
        self.canary_weight = Gauge(
            "sluicegate_canary_weight_percent", "Share of an alias's live traffic its canary serves, in percent.",
            ("model",), registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.canary_decisions = counter(
            "sluicegate_canary_decisions_total", "Canary decisions written (step, promote, rollback, ...), by alias.",
            ("model", "action"), r, fast=fast,
        )  # fmt: skip
        self.shadow_requests = counter(
            "sluicegate_shadow_requests_total", "Requests mirrored to a canary candidate, by alias and result (ok, error, shed).",
            ("model", "result"), r, fast=fast,
        )  # fmt: skip
        # What the gateway itself adds, as ``x-sluicegate-overhead-ms`` says per response (``router.serve``).
        overhead = histogram(
            "sluicegate_overhead_seconds",
            "Time spent outside upstream calls until the response headers: a whole non-streamed answer, a stream before its first byte.",
            ("mode",), OVERHEAD_BUCKETS, r, fast=fast,
        )  # fmt: skip
        self.overhead_unary, self.overhead_stream = overhead.labels("unary"), overhead.labels("stream")
        # How long an event arriving at a random moment waits for the event loop (router.loop_lag).
        self.loop_lag = Histogram(
            "sluicegate_event_loop_lag_seconds",
            "Sampled wait of an event for this worker's event loop: time a request can spend unread before any per-request figure starts.",
            buckets=LOOP_LAG_BUCKETS, registry=r,
        )  # fmt: skip
        self._loop_lag_probe: LoopLagProbe | None = None
        self.plugin_hook_seconds = histogram(
            "sluicegate_plugin_hook_seconds", "Time in plugin hooks, by plugin and hook.", ("plugin", "hook"),
            (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0), r, fast=fast,
        )  # fmt: skip
        self.plugin_errors = counter(
            "sluicegate_plugin_errors_total", "Plugin hooks that raised or timed out, by plugin, hook and reason (error, timeout).",
            ("plugin", "hook", "reason"), r, fast=fast,
        )  # fmt: skip
        self.responses_expired = Counter(
            "sluicegate_responses_expired_total", "Stored responses deleted by the expiry sweep once past their retention.",
            registry=r,
        )  # fmt: skip
        # (route, model, status) --> (count, duration); model --> (prompt tokens, completion tokens)
        self._children: dict[tuple[str, str, int], tuple[CounterChild, HistogramChild]] = {}
        self._token_children: dict[str, tuple[CounterChild, CounterChild]] = {}
        # prometheus_client keeps no exemplars in multiprocess mode: none are made there.
        self.genai = GenAIMetrics(r, exemplars=self.multiproc_dir is None, fast=fast)
        self.spend = SpendMetrics(r, fast=fast)
        self.live = LiveFigures(r, self.multiproc_dir, mirror)
        in_flight = self.in_flight
        self.live.add(LiveFigure(
            "sluicegate_in_flight_requests", "Requests being served now.", (), "livesum", lambda: (((), float(in_flight.value)),),
        ))  # fmt: skip
        budgets = self.spend.budgets
        self.live.add(LiveFigure(
            "sluicegate_budget_remaining", "What a budget has left (USD for money, tokens for tokens) after the latest reservation on it; "
            "its whole limit once its period has ended.", BUDGET_LABELS, "livemin", budgets.remaining,
        ))  # fmt: skip
        self.live.add(LiveFigure(
            "sluicegate_budget_limit", "A budget's limit for its period (USD for money, tokens for tokens).", BUDGET_LABELS, "livemax",
            budgets.limits,
        ))  # fmt: skip
        self.live.add(LiveFigure(
            "sluicegate_log_lines_dropped", "Log lines dropped because stderr stayed blocked while the queue filled up.", (), "livesum",
            lambda: (((), float(dropped_lines())),),
        ))  # fmt: skip

    def track_engine_load(self, source: LoadSource) -> None:
        """Engine queue figures for autoscaling (KEDA reads them through Prometheus); each worker's engines add up."""
        self.live.add(LiveFigure(
            "sluicegate_engine_running_requests", "Requests an engine is running.", ("deployment",), "livesum",
            lambda: (((name,), run) for name, (run, _) in source().items()),
        ))  # fmt: skip
        self.live.add(LiveFigure(
            "sluicegate_engine_waiting_requests", "Requests waiting for an engine.", ("deployment",), "livesum",
            lambda: (((name,), wait) for name, (_, wait) in source().items()),
        ))  # fmt: skip

    def track_breakers(self, source: BreakerSource) -> None:
        """Whether each deployment's circuit breaker is open (1) or not (0): open in any worker reads open."""
        self.live.add(LiveFigure(
            "sluicegate_breaker_open", "1 while a deployment's circuit breaker is open.", ("deployment",), "livemax",
            lambda: (((name,), 1.0 if is_open else 0.0) for name, is_open in source().items()),
        ))  # fmt: skip

    def track_queues(self, source: Callable[[], Iterable[Alias]]) -> None:
        """The aliases' fair queues (those with ``max_concurrent``): their depth, waits and refusals."""
        self.live.add(LiveFigure(
            "sluicegate_queue_depth", "Requests waiting in an alias's queue for a slot, by alias.", ("model",), "livesum",
            lambda: (((alias.name,), alias.queue.waiting) for alias in source() if alias.queue is not None),
        ))  # fmt: skip
        self.watch_queues(source())

    def watch_queues(self, aliases: Iterable[Alias]) -> None:
        """Observe the queues of ``aliases`` (a new config's); a queue a reload kept is already observed."""
        for alias in aliases:
            queue = alias.queue
            if queue is not None and queue.observer is None:
                queue.observer = self.spend.queue_observer(alias.name)

    def track_ledger(self, source: Callable[[], LedgerBacklog]) -> None:
        """The ledger's backlog: rows in memory for the next batch, bytes spooled on disk while the store is down."""

        def pending() -> Reading:
            return (((), source().pending_rows),)

        def spooled() -> Reading:
            return (((), source().spool_bytes),)

        def healthy() -> Reading:
            return (((), 1.0 if source().healthy else 0.0),)

        self.live.add(
            LiveFigure("sluicegate_ledger_pending_rows", "Ledger rows in memory waiting for the next batch.", (), "livesum", pending)
        )
        # Workers share the spool file (state.ledger_spool_path): each reads all of it.
        self.live.add(LiveFigure(
            "sluicegate_ledger_spool_bytes", "Bytes of ledger rows spooled on disk, waiting for the store to take them.", (), "livemax",
            spooled,
        ))  # fmt: skip
        self.live.add(
            LiveFigure("sluicegate_ledger_store_up", "0 while ledger writes fail and rows go to the spool.", (), "livemin", healthy)
        )

    def finished(self, ctx: FinishedRequest) -> None:
        """A request ended (answered, failed or cut off): its count, latency, tokens, GenAI figures, refusal."""
        model = ctx.alias if ctx.plan else _model(ctx)  # routed, so configured
        status = ctx.status
        key = (ctx.route, model, status)
        children = self._children.get(key)
        if children is None:
            children = self._new_children(key)
        children[0].inc()
        children[1].observe(ctx.elapsed)
        usage = ctx.usage
        if usage is not None and status == 200:
            tokens = self._token_children.get(model)
            if tokens is None:
                tokens = self._new_token_children(model)
            tokens[0].inc(usage.prompt_tokens)
            tokens[1].inc(usage.completion_tokens)
        self.genai.finished(ctx, model)
        if ctx.error is not None:
            self.spend.finished(ctx)

    def settled(self, ctx: FinishedRequest) -> None:
        """A request's cost is known (``ctx.cost``, pico-USD): settlement is done."""
        self.spend.settled(ctx, ctx.alias if ctx.plan else _model(ctx))

    def observe(self, route: str, model: str, status: int, seconds: float) -> None:
        key = (route, model, status)
        children = self._children.get(key)
        if children is None:
            children = self._new_children(key)
        children[0].inc()
        children[1].observe(seconds)

    def count_tokens(self, model: str, prompt: int, completion: int) -> None:
        children = self._token_children.get(model)
        if children is None:
            children = self._new_token_children(model)
        children[0].inc(prompt)
        children[1].inc(completion)

    def _new_children(self, key: tuple[str, str, int]) -> tuple[CounterChild, HistogramChild]:
        route, model, status = key
        labels = (route, model, str(status))
        children = self._children[key] = (self.requests.labels(*labels), self.latency.labels(*labels))
        return children

    def _new_token_children(self, model: str) -> tuple[CounterChild, CounterChild]:
        children = self._token_children[model] = (self.tokens.labels(model, "prompt"), self.tokens.labels(model, "completion"))
        return children

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The /metrics body and its content type: OpenMetrics (with exemplars) if ``accept`` asks for it."""
        registry = self._collected()
        if accept is not None and OPENMETRICS in accept:
            encode, content_type = choose_encoder(accept)
            return encode(registry), content_type
        return generate_latest(registry), PROMETHEUS_CONTENT_TYPE

    def render(self) -> bytes:
        return self.exposition()[0]

    def _collected(self) -> CollectorRegistry:
        if self.multiproc_dir is None:
            return self.registry
        # Several workers: aggregate every worker's files, not just this one's (this one's live figures fresh).
        self.live.refresh()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiproc_dir)  # type: ignore[no-untyped-call]
        return registry

    def start(self, loop_lag_interval_s: float = 0.0) -> None:
        """With several workers, keep this worker's live figures copied into the shared files; sample the
        event loop's lag every ``loop_lag_interval_s`` (0: not at all). Call it on the running loop."""
        self.live.start()
        if loop_lag_interval_s > 0 and self._loop_lag_probe is None:
            self._loop_lag_probe = LoopLagProbe(asyncio.get_running_loop(), self.loop_lag.observe, loop_lag_interval_s)
            self._loop_lag_probe.start()

    def flush(self) -> None:
        """Several workers: copy this worker's counts into its files now (``stop`` calls it last)."""
        self.live.flush()

    def close(self) -> None:
        self.live.close()
        probe, self._loop_lag_probe = self._loop_lag_probe, None
        if probe is not None:
            probe.close()


def _model(ctx: FinishedRequest) -> str:
    """The alias as a label value: a configured one only, for a client may ask for any name.

    (``finished`` and ``settled`` take a routed request's alias, configured, without calling this.)
    """
    if ctx.plan:
        return ctx.alias  # routed, so configured
    try:
        ctx.snapshot.router.get(ctx.alias)
    except NotFound:
        return UNKNOWN
    return ctx.alias
