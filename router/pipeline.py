"""The request pipeline: sequences the steps, owns none of them.

auth and decode happen in the handler; here: route --> serve (with fallback
before the first byte only) --> settle (metrics, usage).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from policies.fair_queue import FairQueue
from policies.routing import Deployment, RouteHint, Router
from router.attempts import attempt, unavailable
from router.auth import Principal
from router.errors import GatewayError, UpstreamError, sse_error_event
from router.metrics import Metrics
from serving.base import Completion, EngineRequest, JsonObject, Kind, StreamChunk, Usage
from serving.retry import RetryPolicy

_DONE = b"data: [DONE]\n\n"
# Status recorded when the client goes away before the response is complete.
CLIENT_CLOSED = 499


@dataclass(slots=True)
class RequestContext:
    request_id: str
    principal: Principal
    kind: Kind
    route: str
    alias: str
    body: JsonObject
    stream: bool = False
    include_usage: bool = False
    session_id: str | None = None
    started: float = field(default_factory=time.perf_counter)
    deployment: str = ""
    usage: Usage | None = None
    status: int = 200
    ttft: float | None = None
    queue: FairQueue | None = None

    def engine_request(self, deployment: Deployment) -> EngineRequest:
        # request --> engine input: the alias becomes the upstream's own model name.
        body = {**self.body, "model": deployment.config.model}
        return EngineRequest(
            kind=self.kind,
            body=body,
            request_id=self.request_id,
            tenant=self.principal.tenant,
            stream=self.stream,
            include_usage=self.include_usage,
            session_id=self.session_id,
        )


class Pipeline:
    def __init__(self, router: Router, metrics: Metrics, retry: RetryPolicy | None = None) -> None:
        self.router = router
        self.metrics = metrics
        self.retry = retry or RetryPolicy()

    def _plan(self, ctx: RequestContext) -> list[Deployment]:
        plan = self.router.plan(ctx.alias, RouteHint(session_id=ctx.session_id, body=ctx.body))
        if not plan:
            raise unavailable(ctx.alias, self.router.get(ctx.alias).deployments)
        return plan

    async def unary(self, ctx: RequestContext) -> Completion:
        """Serve a non-streamed request, with fallback and retries on retryable failures."""

        async def run(deployment: Deployment) -> Completion:
            request = ctx.engine_request(deployment)
            if ctx.kind == "embedding":
                return await deployment.engine.embed(request)
            return await deployment.engine.generate(request)

        completion, deployment = await attempt(self._plan(ctx), run, self.retry, self.metrics, ctx.alias)
        ctx.deployment = deployment.name
        ctx.usage = completion.usage
        return completion

    async def open_stream(self, ctx: RequestContext) -> AsyncIterator[bytes]:
        """Start a stream; fallback and retries are allowed only until the first chunk exists.

        Returns the SSE byte iterator to relay. Errors before the first chunk are
        raised (so the client gets a proper HTTP error); after it, they become an
        SSE error event and the stream ends without a retry.
        """

        async def run(deployment: Deployment) -> tuple[StreamChunk, AsyncIterator[StreamChunk]]:
            chunks = deployment.engine.stream(ctx.engine_request(deployment))
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                raise UpstreamError(f"deployment {deployment.name} sent an empty stream") from None
            except BaseException:
                await chunks.aclose()
                raise
            return first, chunks

        (first, chunks), deployment = await attempt(self._plan(ctx), run, self.retry, self.metrics, ctx.alias)
        ctx.deployment = deployment.name
        ctx.ttft = time.perf_counter() - ctx.started
        self.metrics.ttft.labels(ctx.alias, deployment.name).observe(ctx.ttft)
        return self._relay(ctx, first, chunks)

    async def _relay(self, ctx: RequestContext, first: StreamChunk, chunks: AsyncIterator[StreamChunk]) -> AsyncIterator[bytes]:
        include_usage = ctx.include_usage
        ctx.status = CLIENT_CLOSED
        try:
            chunk: StreamChunk | None = first
            while chunk is not None:
                if chunk.usage is not None:
                    ctx.usage = chunk.usage
                if include_usage or not chunk.usage_only:
                    yield b"data: " + chunk.data + b"\n\n"
                chunk = await anext(chunks, None)
            ctx.status = 200
            yield _DONE
        except GatewayError as exc:
            # After the first byte: tell the client in-band, never retry.
            ctx.status = exc.status
            self.metrics.upstream_errors.labels(ctx.deployment, exc.code or "error").inc()
            yield sse_error_event(exc)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
            self.finish(ctx)

    def begin(self, ctx: RequestContext) -> None:
        self.metrics.in_flight.inc()

    async def admit(self, ctx: RequestContext) -> None:
        """Wait for a place in the alias's queue (fair between tenants) when it has one."""
        queue = self.router.get(ctx.alias).queue
        if queue is None:
            return
        p = ctx.principal
        await queue.acquire(p.tenant, p.weight, p.priority)
        ctx.queue = queue

    def finish(self, ctx: RequestContext) -> None:
        """Settle: one place where a finished request is recorded."""
        self.metrics.in_flight.dec()
        if ctx.queue is not None:
            ctx.queue.release()
            ctx.queue = None
        self.metrics.observe(ctx.route, ctx.alias, ctx.status, time.perf_counter() - ctx.started)
        usage = ctx.usage
        if usage is not None and ctx.status == 200:
            self.metrics.tokens.labels(ctx.alias, "prompt").inc(usage.prompt_tokens)
            self.metrics.tokens.labels(ctx.alias, "completion").inc(usage.completion_tokens)

