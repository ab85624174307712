"""The OpenTelemetry GenAI semantic-convention instruments, in Prometheus naming.

``gen_ai.client.token.usage`` --> ``gen_ai_client_token_usage`` (histogram,
``gen_ai_token_type`` input/output), ``gen_ai.client.operation.duration`` -->
``gen_ai_client_operation_duration_seconds``, ``gen_ai.server.time_to_first_token``
and ``gen_ai.server.time_per_output_token`` --> ``..._seconds``; attributes
become labels with dots as underscores. Buckets are the conventions' advice.

Every label value is bounded by the config: the request model is a configured
alias (``UNKNOWN`` otherwise), the provider and response model come from the
deployment, ``error_type`` is one of the gateway's own error codes (``_OTHER``
for whatever an upstream calls its errors). A request's trace id, when it has
one, rides along as an exemplar (OpenMetrics only; prometheus_client keeps no
exemplars in multiprocess mode, so with several workers there are none).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from core.errors import GatewayError
from router.metrics_fast import HistogramChild, histogram
from router.tracing_genai import OPERATIONS, provider_name

if TYPE_CHECKING:
    from router.metrics_view import FinishedRequest

# Bucket boundaries the GenAI semantic conventions advise.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)

# A label value the client could not choose: a model alias that does not exist, no deployment.
UNKNOWN = "-"
OTHER_ERROR = "_OTHER"
CLIENT_CLOSED_ERROR = "client_closed"
LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model")


def _own_codes(cls: type[GatewayError]) -> Iterator[str]:
    for sub in cls.__subclasses__():
        # Only the error tree's own classes: the set must not depend on what else was imported.
        if sub.__module__ == GatewayError.__module__ and sub.code:
            yield sub.code
        yield from _own_codes(sub)


# The error codes error_type may take; anything else (an upstream's own code) is _OTHER.
ERROR_TYPES = frozenset({"internal_error", "no_permitted_deployment", *_own_codes(GatewayError)})


def error_type(code: str | None, status: int) -> str:
    if code is not None and code in ERROR_TYPES:
        return code
    return CLIENT_CLOSED_ERROR if status == 499 else OTHER_ERROR


# (kind, provider, request model, response model) --> label values
_Key = tuple[str, str, str, str]
# (input tokens, output tokens, time to first token, time per output token)
_Children = tuple[HistogramChild, HistogramChild, HistogramChild, HistogramChild]


class _Series:
    """The children of one operation, provider, request model and response model, made as they are first needed."""

    __slots__ = ("children", "durations", "labels")

    def __init__(self, labels: tuple[str, str, str, str]) -> None:
        self.labels = labels
        # error_type ("" on success) --> operation duration
        self.durations: dict[str, HistogramChild] = {}
        self.children: _Children | None = None


class GenAIMetrics:
    def __init__(self, registry: CollectorRegistry, exemplars: bool, fast: bool = False) -> None:
        """``fast``: lock-free instruments (``router.metrics_fast``), for one process only."""
        self.exemplars = exemplars
        self.token_usage = histogram(
            "gen_ai_client_token_usage", "Tokens used per operation (gen_ai.client.token.usage), by token type (input, output).",
            (*LABELS, "gen_ai_token_type"), TOKEN_BUCKETS, registry, fast=fast,
        )  # fmt: skip
        self.duration = histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration (gen_ai.client.operation.duration); error_type is empty on success.",
            (*LABELS, "error_type"), DURATION_BUCKETS, registry, fast=fast,
        )  # fmt: skip
        self.ttft = histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first token of successful streamed responses (gen_ai.server.time_to_first_token).",
            LABELS, TTFT_BUCKETS, registry, fast=fast,
        )  # fmt: skip
        self.tpot = histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first, of successful streamed responses (gen_ai.server.time_per_output_token).",
            LABELS, TPOT_BUCKETS, registry, fast=fast,
        )  # fmt: skip
        self._series: dict[_Key, _Series] = {}

    def finished(self, ctx: FinishedRequest, model: str) -> None:
        """Record a finished request; ``model`` is its alias if that is a configured one, else ``UNKNOWN``."""
        served = ctx.served
        if served is not None:
            # The same provider names and operation names as the request's span.
            key = (ctx.kind, provider_name(served), model, served.config.model)
        else:
            plan = ctx.plan
            key = (ctx.kind, provider_name(plan[0]) if plan else UNKNOWN, model, "")
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(_labels(key))
        status, elapsed, trace_id = ctx.status, ctx.elapsed, ctx.trace_id
        exemplar = {"trace_id": trace_id} if trace_id is not None and self.exemplars else None
        error = "" if status == 200 else error_type(ctx.error, status)
        duration = series.durations.get(error)
        if duration is None:
            duration = series.durations[error] = self.duration.labels(*series.labels, error)
        duration.observe(elapsed, exemplar)
        usage, ttft = ctx.usage, ctx.ttft
        if ttft is not None and status != 200:
            ttft = None
        if usage is None and ttft is None:
            return
        children = series.children
        if children is None:
            children = series.children = self._new_children(series.labels)
        if usage is not None:
            children[0].observe(usage.prompt_tokens, exemplar)
            if key[0] != "embedding":
                children[1].observe(usage.completion_tokens, exemplar)
        if ttft is not None:
            children[2].observe(ttft, exemplar)
            if usage is not None and usage.completion_tokens > 1:
                children[3].observe((elapsed - ttft) / (usage.completion_tokens - 1), exemplar)

    def _new_children(self, labels: tuple[str, str, str, str]) -> _Children:
        return (
            self.token_usage.labels(*labels, "input"),
            self.token_usage.labels(*labels, "output"),
            self.ttft.labels(*labels),
            self.tpot.labels(*labels),
        )


def _labels(key: _Key) -> tuple[str, str, str, str]:
    kind, provider, model, response = key
    return OPERATIONS.get(kind, kind), provider, model, response  # type: ignore[call-overload]
