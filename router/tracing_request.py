"""One traced request's spans: the root, its pipeline steps, its upstream attempts, its settlement.

The tree, all children of the root (SERVER, ``{operation} {alias}``)::

    auth          the route's authentication (timed by the route, recorded at begin)
    pii           the tenant's PII step, when it has a policy
    routing       the alias's plan under the tenant's routing policy
    admission     the alias's fair queue (``sluicegate.queue.wait_s``), limits and budget reservation
    {op} {model}  CLIENT, one per upstream try (``sluicegate.attempt``); the upstream call names it
                  as its parent; a stream's successful try ends with the stream
    settlement    billing's settle; it may end after the root when it runs as a task

Every span ends exactly once: a step when the next begins or ``leave`` is
called, a failed try at its failure, everything else in ``end``, which also
ends whatever a failure left open (marked with the request's error).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from opentelemetry.trace import SpanKind, Status, StatusCode

from core.errors import GatewayError
from router.context import CLIENT_CLOSED, RequestContext
from router.tracing_content import content_attributes
from router.tracing_genai import OPERATIONS, Attributes, reply_attributes, stream_attributes, upstream_attributes, upstream_kind
from serving.sse import singles

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from policies.routing import Deployment

_ERROR = Status(StatusCode.ERROR)


def error_type(ctx: RequestContext) -> str | None:
    """The request's ``error.type``: the gateway's error code, None unless it failed."""
    if ctx.status < 400:
        return None
    return ctx.error or ("client_closed" if ctx.status == CLIENT_CLOSED else "_OTHER")


def _fail(span: Span, error: str) -> None:
    span.set_attribute("error.type", error)
    span.set_status(_ERROR)


class RequestTrace:
    __slots__ = ("_attempt", "_attempt_ended", "_attempt_started", "_deployment", "_offset", "_parent", "_request", "_step",
                 "_step_started", "_tracer", "content", "ctx", "reply", "root")  # fmt: skip

    def __init__(self, tracer: Tracer, ctx: RequestContext, root: Span, parent: Context, offset_ns: int, request: Attributes) -> None:
        self._tracer = tracer
        self.ctx = ctx
        self.root = root
        self._parent = parent  # the root as the current span: every child's parent
        self._offset = offset_ns  # perf_counter_ns --> time_ns
        self._request = request  # the client's settings (gen_ai.request.*), shared with the attempts
        self._step: Span | None = None
        self._step_started = 0.0
        self._attempt: Span | None = None
        self._attempt_started = 0.0
        self._attempt_ended: int | None = None
        self._deployment: Deployment | None = None
        # Tenant opted in to prompts and completions on its spans.
        self.content = False
        # A unary answer as the upstream sent it, before any masked value was restored.
        self.reply: bytes | None = None

    def wall_ns(self, perf: float) -> int:
        """A ``perf_counter`` reading as the wall-clock nanoseconds a span takes."""
        return int(perf * 1e9) + self._offset

    def span(self, name: str, start: float, end: float) -> None:
        """A step that already happened (the route's auth): a child span with its own times."""
        self._tracer.start_span(name, context=self._parent, start_time=self.wall_ns(start)).end(end_time=self.wall_ns(end))

    # --- steps ------------------------------------------------------------------------

    def enter(self, step: str) -> None:
        """A pipeline step begins (and the one before it, if any, ends)."""
        if self._step is not None:
            self._step.end()
        self._step = self._tracer.start_span(step, context=self._parent)
        self._step_started = time.perf_counter()

    def leave(self) -> None:
        if self._step is not None:
            self._step.end()
            self._step = None

    def queued(self) -> None:
        """The fair queue let the request in: how long it waited, on the admission step."""
        if self._step is not None:
            self._step.set_attribute("sluicegate.queue.wait_s", time.perf_counter() - self._step_started)

    # --- upstream attempts ------------------------------------------------------------

    def attempt(self, deployment: Deployment, number: int) -> None:
        if self._attempt is not None:  # never left open by ``attempt``, which gives each try a verdict
            self._attempt.end()
        ctx = self.ctx
        model = deployment.config.model
        operation = OPERATIONS[upstream_kind(ctx.kind, deployment)]
        attributes: Attributes = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model,
            **upstream_attributes(deployment),
            **self._request,
            "sluicegate.deployment": deployment.name,
            "sluicegate.attempt": number,
        }
        if ctx.max_tokens is not None:  # the budget's bound is what the upstream was sent
            attributes["gen_ai.request.max_tokens"] = ctx.max_tokens
        span = self._tracer.start_span(f"{operation} {model}", context=self._parent, kind=SpanKind.CLIENT, attributes=attributes)
        self._attempt, self._attempt_ended, self._deployment = span, None, deployment
        self._attempt_started = time.perf_counter()
        sc = span.get_span_context()
        ctx.traceparent = f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}"

    def attempt_failed(self, exc: GatewayError) -> None:
        span, self._attempt = self._attempt, None
        if span is not None:
            _fail(span, exc.code or type(exc).__name__)
            span.end()

    def attempt_succeeded(self) -> None:
        if not self.ctx.stream:
            self._attempt_ended = time.time_ns()
        elif self._attempt is not None:  # a stream's try goes on until the stream ends; its first chunk is here
            self._attempt.set_attribute("gen_ai.response.time_to_first_chunk", time.perf_counter() - self._attempt_started)

    # --- the end -----------------------------------------------------------------------

    def end(self) -> None:
        """End the step, the try and the root: the request is finished (settlement may still run)."""
        ctx = self.ctx
        ctx.trace = None
        error = error_type(ctx)
        if self._step is not None:
            if error is not None:
                _fail(self._step, error)
            self.leave()
        response = self._response()
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.set_attributes({k: v for k, v in response.items() if k != "gen_ai.response.time_to_first_chunk"})
            if error is not None and ctx.stream:  # a unary try was over before anything could fail
                _fail(attempt, error)
            attempt.end(end_time=self._attempt_ended)
        root = self.root
        root.set_attributes(response)
        root.set_attributes(self._outcome())
        if error is not None:
            _fail(root, error)
        if self.content:
            root.set_attributes(content_attributes(ctx, self.reply, response.get("gen_ai.response.finish_reasons", [])))
        root.end()

    def _response(self) -> Attributes:
        """``gen_ai.provider.name``, ``server.*``, ``gen_ai.response.*`` and usage, as far as they are known."""
        ctx = self.ctx
        deployment = ctx.served or self._deployment
        out: Attributes = {}
        if deployment is not None:
            out.update(upstream_attributes(deployment))
            out["gen_ai.response.model"] = deployment.config.model
        if ctx.served is not None:
            if self.reply is not None:
                out.update(reply_attributes(self.reply))
            elif ctx.stream:
                out.update(stream_attributes(upstream_kind(ctx.kind, ctx.served), singles(ctx.generated)))
                if ctx.ttft is not None:
                    out["gen_ai.response.time_to_first_chunk"] = ctx.ttft
        usage = ctx.usage
        if usage is not None:
            out["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            if ctx.kind != "embedding":
                out["gen_ai.usage.output_tokens"] = usage.completion_tokens
            if usage.cached_tokens:
                out["gen_ai.usage.cache_read.input_tokens"] = usage.cached_tokens
        return out

    def _outcome(self) -> Attributes:
        """Sluicegate's own: how the request was routed and answered (no key, prompt or completion)."""
        ctx = self.ctx
        out: Attributes = {"http.response.status_code": ctx.status, "sluicegate.config.version": ctx.snapshot.version}
        if ctx.deployment:
            out["sluicegate.deployment"] = ctx.deployment
        if ctx.arm is not None:
            out["sluicegate.canary.arm"] = "mirrored" if ctx.mirror else ctx.arm
        if ctx.route_reason:
            out["sluicegate.route_reason"] = ctx.route_reason
        if ctx.pii_counts:
            out["sluicegate.pii.entities"] = sum(ctx.pii_counts.values())
        if ctx.error == "budget_cutoff":
            out["sluicegate.budget_cutoff"] = True
        return out

    # --- settlement --------------------------------------------------------------------

    def settle(self, settle: Callable[[RequestContext], asyncio.Task[None] | None]) -> asyncio.Task[None] | None:
        """Run billing's ``settle`` in a span of its own, which ends when the settling does."""
        span = self._tracer.start_span("settlement", context=self._parent)
        try:
            task = settle(self.ctx)
        except BaseException:
            span.set_status(_ERROR)
            span.end()
            raise
        if task is None:
            span.end()
        else:
            task.add_done_callback(lambda done: _settled(span, done))
        return task


def _settled(span: Span, task: asyncio.Task[None]) -> None:
    # A failure is left to whoever awaits the task (asking for it here would mark it seen).
    if task.cancelled():
        span.set_status(_ERROR)
    span.end()
