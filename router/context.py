"""What the pipeline knows about one request as it moves through the steps."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from core.principal import Principal
from serving.base import EngineRequest, JsonObject, Kind, StreamChunk, Usage

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

    from budgets.accounting import Reservation
    from budgets.tokens import Counter
    from core.errors import GatewayError
    from policies.canary_samples import Arm
    from policies.fair_queue import FairQueue
    from policies.guardrails import Guardrails
    from policies.pii_restore import Restorer
    from policies.routing import Deployment
    from router.cache_state import CacheState
    from router.render import Renderer
    from router.snapshot import Snapshot

# Status recorded when the client goes away before the response is complete.
CLIENT_CLOSED = 499


class Trace(Protocol):
    """A traced request's spans, as the pipeline drives them (``router.tracing_request.RequestTrace``)."""

    # A unary answer as the upstream sent it (masked values not restored yet).
    reply: bytes | None

    def enter(self, step: str) -> None:
        """A pipeline step begins (and the one before it ends)."""

    def leave(self) -> None:
        """The current step ends."""

    def queued(self) -> None:
        """The fair queue let the request in: the wait goes on the current step."""

    def attempt(self, deployment: Deployment, number: int) -> None:
        """An upstream try begins: its span opens, and the upstream call will name it as its parent."""

    def attempt_failed(self, exc: GatewayError) -> None:
        """The try failed: its span ends with the error."""

    def attempt_succeeded(self) -> None:
        """The try succeeded: its span ends with the request (a stream's when the stream does)."""

    def end(self) -> None:
        """The request is finished: every span but the settlement's ends, and ``ctx.trace`` is None again."""

    def settle(self, settle: Callable[[RequestContext], asyncio.Task[None] | None]) -> asyncio.Task[None] | None:
        """Billing's ``settle``, in a span that ends when the settling does."""


@dataclass(slots=True)
class RequestContext:
    request_id: str
    # The config this request runs on, start to end, whatever reloads meanwhile.
    snapshot: Snapshot
    principal: Principal
    kind: Kind
    route: str
    alias: str
    body: JsonObject
    stream: bool = False
    include_usage: bool = False
    session_id: str | None = None
    # An API surface other than OpenAI chat: renders what the pipeline gets back (``router.render``).
    render: Renderer[RequestContext] | None = None
    started: float = field(default_factory=time.perf_counter)
    wall_started: float = field(default_factory=time.time)
    # When the caller was authenticated (``perf_counter``; 0.0: not by the route), for the trace's auth span.
    authenticated: float = 0.0
    # routing
    plan: list[Deployment] = field(default_factory=list)
    deployment: str = ""
    served: Deployment | None = None
    # The alias's canary: which arm the request was assigned ("stable" or
    # "candidate"), and whether it is mirrored to the candidate in its shadow phase.
    arm: Arm | None = None
    mirror: bool = False
    # The request got as far as an upstream attempt (refusals before it say nothing of a canary).
    attempted: bool = False
    # Seconds spent in upstream attempts (retries and their backoff included): for a stream, until its first chunk.
    upstream_s: float = 0.0
    route_reason: str | None = None
    # PII found under a `restrict` policy: only self-hosted deployments may serve.
    self_hosted_only: bool = False
    # Under redact / mask_and_restore: what cloud deployments get instead of `body`.
    cloud_body: JsonObject | None = None
    restorer: Restorer | None = None
    queue: FairQueue | None = None
    # usage and money
    reservation: Reservation | None = None
    counter: Counter | None = None
    allowance: int | None = None
    # The completion bound the budget sets (per choice), sent upstream as max_tokens.
    max_tokens: int | None = None
    usage: Usage | None = None
    generated_text: list[str] = field(default_factory=list)
    # Streamed chunks, kept so their text can be counted if the upstream reports no usage.
    generated: list[StreamChunk] = field(default_factory=list)
    cost: int = 0
    # outcome
    status: int = 200
    error: str | None = None
    # What admission refused (GatewayError.refused): a limit's kind or a spent budget's key.
    refused: str | None = None
    ttft: float | None = None
    elapsed: float = 0.0
    pii_counts: dict[str, int] = field(default_factory=dict)
    # The trace this request belongs to (32 hex digits): its span's, or the client's when tracing is off.
    trace_id: str | None = None
    # W3C trace context each upstream call carries: the client's own when tracing is off, the
    # attempt's span when it is on (``router.tracing_request``); None: none is sent.
    traceparent: str | None = None
    tracestate: str | None = None
    # The request's spans while it is traced; None when tracing is off, sampled out, or once ended.
    trace: Trace | None = None
    # The client's request headers, where the route has them (the cache reads `Cache-Control`).
    client_headers: Mapping[str, str] | None = None
    # What the response cache did (``router.cache_state``); None when the alias has no cache.
    cache: CacheState | None = None
    # The request's guardrails (``router.guardrail_step``); None when neither its tenant nor its alias has any.
    guardrails: Guardrails | None = None
    # The guardrail that blocked the request or cut its stream, for the ledger.
    guardrail: str | None = None
    # Scratch space plugins' hooks share for this request (None until one sets it).
    plugin_state: dict[str, Any] | None = None
    finished: bool = False

    def servable(self, deployments: list[Deployment]) -> list[Deployment]:
        """Those of the planned deployments that can serve this request (all of them, but for a surface that says otherwise)."""
        return deployments

    def source(self, deployment: Deployment) -> JsonObject:
        """The body ``deployment`` may see: a cloud deployment never sees what the PII policy took out."""
        return self.body if self.cloud_body is None or deployment.config.privacy == "self_hosted" else self.cloud_body

    def engine_request(self, deployment: Deployment) -> EngineRequest:
        # request --> engine input: the alias becomes the upstream's own model name.
        source = self.source(deployment)
        if self.max_tokens is None:
            body = {**source, "model": deployment.config.model}
        else:
            body = {**source, "model": deployment.config.model, "max_tokens": self.max_tokens}
        return EngineRequest(
            kind=self.kind,
            body=body,
            request_id=self.request_id,
            tenant=self.principal.tenant,
            stream=self.stream,
            include_usage=self.include_usage,
            session_id=self.session_id,
            # The W3C trace context the upstream continues (an attempt's span when traced).
            traceparent=self.traceparent,
            tracestate=self.tracestate,
        )
