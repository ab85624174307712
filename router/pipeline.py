"""The request pipeline: sequences the steps, owns none of them.

auth and decode happen in the handler; here: plan the route --> admit (queue,
limits, budget reservation) --> serve (fallback and retries before the first
byte only) --> meter the stream --> settle (metrics, budget, ledger). On a
traced request each step, upstream try and the settlement is a span of its own
(``router.tracing_request``); untraced, that costs one check per step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from core.config import RoutingPolicy
from core.errors import GatewayError, PermissionDenied, UpstreamError, sse_error_event
from policies.guardrails_stream import HoldBack
from policies.routing import Deployment, RouteHint
from router.answers import LastChunk
from router.attempts import attempt, unavailable
from router.billing import Billing
from router.cache_replay import replay_stream, replayed
from router.cache_step import ResponseCache
from router.canaries import Canaries
from router.context import CLIENT_CLOSED, RequestContext
from router.guardrail_step import GuardrailStep
from router.metrics import Metrics
from router.privacy import apply_pii
from router.reply_text import completion_texts
from router.stream_end import cut_off, with_usage
from router.stream_meter import StreamMeter
from router.tracing import Tracing, pass_through
from serving.base import Completion, StreamChunk, stream_batches
from serving.sse import split_events

_DONE = b"data: [DONE]\n\n"
_NONE: list[StreamChunk] = []  # a list already relayed: nothing left in it

__all__ = ["CLIENT_CLOSED", "Pipeline", "RequestContext"]


class Pipeline:
    """Stateless between requests: the router, policies and retry policy come from the request's snapshot."""

    def __init__(self, metrics: Metrics, billing: Billing, tracing: Tracing, canaries: Canaries | None = None) -> None:
        self.tracing = tracing
        self.metrics = metrics
        self.billing = billing
        self.canaries = canaries
        # The response cache (``router.cache_step``); consulted only for an alias with a ``cache`` block.
        self.cache: ResponseCache | None = None
        # The guardrail step (``router.guardrail_step``); consulted only when the snapshot has a guardrail.
        self.guardrails: GuardrailStep | None = None

    def begin(self, ctx: RequestContext, traceparent: str | None = None, tracestate: str | None = None) -> None:
        """The request is under way; it continues the client's W3C trace context, if it sent one."""
        self.metrics.in_flight.value += 1
        if self.tracing.enabled:
            self.tracing.start(ctx, traceparent, tracestate)
        elif traceparent is not None:
            pass_through(ctx, traceparent, tracestate)

    async def admit(self, ctx: RequestContext) -> None:
        """Route by the tenant's policy, queue for the alias (fair between tenants), reserve limits and budget."""
        p = ctx.principal
        snapshot = ctx.snapshot
        plugins = snapshot.plugins
        trace = ctx.trace  # None unless the request is traced: a step then costs one check
        if plugins.after_auth:
            await plugins.run(plugins.after_auth, "after_auth", ctx)
        policies = snapshot.policies
        pii = policies.pii(p.tenant)
        if pii is not None:
            if trace is not None:
                trace.enter("pii")
            await apply_pii(ctx, pii, self.metrics)
            if trace is not None:
                trace.leave()
        if snapshot.guardrails is not None and self.guardrails is not None:
            await self.guardrails.pre(ctx)  # on the client's own body, before anything is routed or reserved
        if plugins.before_route:
            await plugins.run(plugins.before_route, "before_route", ctx)
        if trace is not None:
            trace.enter("routing")
        policy = policies.routing(p.tenant)
        router = snapshot.router
        router.get(ctx.alias, policy)  # a 404 for an alias the tenant may not call
        downgraded = self._downgrade(ctx, policy)
        alias = router.get(ctx.alias)
        if alias.candidate and self.canaries is not None:
            self.canaries.assign(ctx, alias)
        hint = RouteHint(session_id=ctx.session_id, body=ctx.body)
        plan = router.plan(ctx.alias, hint, policy, ctx.self_hosted_only, candidate=ctx.arm == "candidate")
        ctx.route_reason = f"{plan.reason},{downgraded}" if downgraded else plan.reason
        if not plan.deployments:
            if plan.removed and "unhealthy" not in plan.removed:
                raise PermissionDenied(
                    f"No deployment of `{ctx.alias}` may receive this request under the tenant's policy.",
                    code="no_permitted_deployment",
                )
            raise unavailable(ctx.alias, alias.deployments)
        ctx.plan = ctx.servable(plan.deployments)
        if trace is not None:
            trace.enter("admission")
        if alias.queue is not None:
            await alias.queue.acquire(p.tenant, p.weight, p.priority)
            ctx.queue = alias.queue
            if trace is not None:
                trace.queued()
        pending = self.billing.reserve(ctx, ctx.plan)
        if pending is not None:
            await pending
        if trace is not None:
            trace.leave()
        if plugins.before_serve:
            await plugins.run(plugins.before_serve, "before_serve", ctx)
        if alias.config.cache is not None and self.cache is not None:
            await self.cache.lookup(ctx, alias, policy.self_hosted_only)

    def _downgrade(self, ctx: RequestContext, policy: RoutingPolicy) -> str | None:
        """A tenant whose money budget runs low is moved to the cheaper alias its policy names."""
        rule = policy.downgrade
        if rule is None or ctx.alias not in rule.aliases:
            return None
        remaining = self.billing.remaining_fraction(ctx.principal.tenant)
        if remaining is None or remaining >= rule.when_remaining_below:
            return None
        original, ctx.alias = ctx.alias, rule.aliases[ctx.alias]
        return f"downgrade:{original}->{ctx.alias}"

    async def unary(self, ctx: RequestContext) -> Completion:
        """Serve a non-streamed request, with fallback and retries on retryable failures."""

        async def run(deployment: Deployment) -> Completion:
            request = ctx.engine_request(deployment)
            if ctx.kind == "embedding":
                return await deployment.engine.embed(request)
            return await deployment.engine.generate(request)

        cache = ctx.cache
        if cache is not None and cache.entry is not None:
            if ctx.guardrails is not None and self.guardrails is not None:
                await self.guardrails.post(ctx, cache.entry.body or b"")  # this requester's own post guardrails
            return replayed(ctx)
        ctx.attempted = True
        upstream = time.perf_counter()
        completion, deployment = await attempt(ctx.plan, run, ctx.snapshot.retry, self.metrics, ctx.alias, ctx.principal.tenant, ctx.trace)
        ctx.upstream_s = time.perf_counter() - upstream
        ctx.served, ctx.deployment = deployment, deployment.name
        ctx.usage = completion.usage
        if cache is not None:
            cache.body = completion.body  # as the deployment sent it: each hit restores it for its own requester
        if completion.usage is None:
            ctx.generated_text = completion_texts(completion.body)
        if ctx.trace is not None:
            ctx.trace.reply = completion.body  # as the upstream sent it: masked values not restored yet
        if ctx.guardrails is not None and self.guardrails is not None:
            await self.guardrails.post(ctx, completion.body)  # a block answers 400; the call is still billed
        if ctx.restorer is not None and deployment.config.privacy == "cloud":
            completion.body = ctx.restorer.restore_completion(completion.body)
        return completion

    async def open_stream(self, ctx: RequestContext) -> AsyncIterator[bytes]:
        """Start a stream; fallback and retries are allowed only until the first chunk exists.

        Returns the SSE byte iterator to relay. Errors before the first chunk are
        raised (so the client gets a proper HTTP error); after it, they become an
        SSE error event and the stream ends without a retry.
        """

        # Runs of plain events, relayed as they came, unless the relay reads or changes events one by one anyway.
        framed = ctx.render is None and ctx.guardrails is None and ctx.restorer is None and not ctx.snapshot.plugins.on_chunk

        async def run(deployment: Deployment) -> tuple[list[StreamChunk], AsyncIterator[list[StreamChunk]]]:
            chunks = stream_batches(deployment.engine, ctx.engine_request(deployment), framed=framed)
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                raise UpstreamError(f"deployment {deployment.name} sent an empty stream") from None
            except BaseException:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
                raise
            return first, chunks

        if ctx.cache is not None and ctx.cache.entry is not None:
            return replay_stream(self, ctx, self.guardrails)
        ctx.attempted = True
        upstream = time.perf_counter()
        (first, chunks), deployment = await attempt(
            ctx.plan, run, ctx.snapshot.retry, self.metrics, ctx.alias, ctx.principal.tenant, ctx.trace
        )
        now = time.perf_counter()
        ctx.upstream_s = now - upstream
        ctx.served, ctx.deployment = deployment, deployment.name
        if ctx.restorer is None or deployment.config.privacy != "cloud":
            ctx.restorer = None  # nothing was masked on the way to this deployment
        ctx.ttft = now - ctx.started
        self.metrics.ttft.labels(ctx.alias, deployment.name).observe(ctx.ttft)
        return self._relay(ctx, first, chunks)

    async def _relay(self, ctx: RequestContext, first: list[StreamChunk], chunks: AsyncIterator[list[StreamChunk]]) -> AsyncIterator[bytes]:
        """Relay the stream's chunks, a list (``serving.base.stream_batches``) at a time; written at each ``batch_end``."""
        include_usage = ctx.include_usage
        render = ctx.render
        ctx.status = CLIENT_CLOSED
        pending: list[bytes] = []  # events in hand, written together
        restore = ctx.restorer.stream() if ctx.restorer is not None else None
        meter = None if ctx.allowance is None else StreamMeter(ctx.allowance, ctx.counter, ctx.generated)
        hooks = ctx.snapshot.plugins if ctx.snapshot.plugins.on_chunk else None
        guard = self.guardrails if ctx.guardrails is not None else None
        screen = guard.screen(ctx) if guard is not None else None  # None: nothing per chunk
        hold = HoldBack(screen.hold) if screen is not None and screen.hold else None
        following = chunks.__anext__  # awaited directly: no anext() wrapper per list
        generated = ctx.generated
        # A run of plain events (StreamChunk.events) goes out as it came where nothing reads or changes events one by one.
        untouched = restore is None and hooks is None and screen is None and render is None
        try:
            batch: list[StreamChunk] | None = first
            while batch is not None:
                run = batch[0]
                if run.events:  # a run is first in its list, if there is one
                    if untouched and (meter is None or meter.takes(run)):
                        generated.append(run)
                        if run.batch_end:
                            yield run.data  # alone in its list; nothing pending (written at each batch_end)
                            batch = _NONE
                        else:
                            pending.append(run.data)
                            batch = batch[1:]
                    else:  # one by one, as any other chunk
                        batch = split_events(run) + batch[1:]
                for chunk in batch:
                    if chunk.usage is not None:
                        ctx.usage = chunk.usage
                    if meter is not None and not meter.admits(chunk):
                        events = cut_off(ctx, meter.exact())
                        if hold is not None:
                            pending += hold.flush()
                        await self.complete(ctx)
                        yield LastChunk(b"".join(pending + events))
                        return
                    generated.append(chunk)
                    if screen is not None and (verdict := screen.feed_chunk(chunk.data)) is not None:
                        assert guard is not None
                        events = guard.cut(ctx, screen, verdict, chunk.data)  # content_filter; never a retry
                        await self.complete(ctx)
                        yield LastChunk(b"".join(pending + with_usage(ctx, events)))
                        return
                    if include_usage or not chunk.usage_only:
                        data = chunk.data if restore is None else restore.feed_chunk(chunk.data)
                        if hooks is not None:
                            data = hooks.chunk(ctx, data)
                        event = b"data: " + data + b"\n\n" if render is None else render.chunk(ctx, data)
                        if hold is None:
                            pending.append(event)
                        else:
                            pending += hold.add(event, screen.fed if screen is not None else 0)
                    if chunk.batch_end and pending:
                        yield pending[0] if len(pending) == 1 else b"".join(pending)
                        pending.clear()
                try:
                    batch = await following()
                except StopAsyncIteration:
                    batch = None
            ctx.status = 200
            if screen is not None and guard is not None:
                guard.screened(ctx, screen)
            if hold is not None:
                pending += hold.flush()
            await self.complete(ctx)
            held = restore.flush() if restore is not None else None
            if held is not None:
                pending.append(b"data: " + held + b"\n\n" if render is None else render.chunk(ctx, held))
            pending.append(_DONE if render is None else render.end(ctx))
            yield LastChunk(b"".join(pending))
        except GatewayError as exc:
            # After the first byte: tell the client in-band, never retry.
            self.metrics.upstream_errors.labels(ctx.deployment, exc.code or "error").inc()
            await self.fail(ctx, exc)
            if hold is not None:
                pending += hold.flush()  # screened: only text no guard found anything in
            pending.append(sse_error_event(exc) if render is None else render.error(ctx, exc))
            yield LastChunk(b"".join(pending))
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
            self.finish(ctx)

    async def fail(self, ctx: RequestContext, exc: GatewayError) -> None:
        ctx.status = exc.status
        ctx.error = exc.code
        ctx.refused = exc.refused
        exc.request_id = ctx.request_id  # the error answer names the request, as a success would
        await self.complete(ctx)

    async def complete(self, ctx: RequestContext) -> None:
        """Finish and wait for settlement: limits are released before the client hears back."""
        task = self.finish(ctx)
        if task is not None:
            await task

    def finish(self, ctx: RequestContext) -> asyncio.Task[None] | None:
        """Settle: the one place where a finished request is recorded, exactly once."""
        if ctx.finished:
            return None
        ctx.finished = True
        ctx.elapsed = time.perf_counter() - ctx.started
        self.metrics.in_flight.value -= 1
        if ctx.queue is not None:
            ctx.queue.release(ctx.principal.tenant)
            ctx.queue = None
        self.metrics.finished(ctx)
        trace = ctx.trace
        if trace is not None:
            trace.end()
        if ctx.arm is not None and self.canaries is not None:
            self.canaries.finished(ctx)
        settling = self.billing.settle(ctx) if trace is None else trace.settle(self.billing.settle)
        plugins = ctx.snapshot.plugins
        if plugins.after_settle:
            plugins.settled(ctx, settling)
        return settling
