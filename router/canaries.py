"""Canaries on the request path: assign an arm, record each request's sample, mirror in the shadow phase.

Assignment and the numbers are ``policies.canary``'s; samples go to a
``policies.canary_samples`` store that every replica adds to (Redis in
production). Mirrored calls run after the client has its answer, once, never
retried, their answers discarded; they are billed to the shadow account the
canary names, never to the tenant, and dropped first when too many are out.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import replace

from budgets.prices import cost_pico
from core.config import CanaryConfig
from core.errors import GatewayError
from policies.canary import assign
from policies.canary_samples import Arm, Sample, SampleStore
from policies.routing import Alias, Deployment, RouteHint
from router.billing import Billing
from router.context import CLIENT_CLOSED, RequestContext
from router.metrics import Metrics
from serving.base import Usage

log = logging.getLogger("sluicegate.canary")


def open_sample_store(redis_url: str | None) -> SampleStore:
    """Shared by every replica through Redis when there is one; this process's otherwise."""
    if redis_url:
        from policies.canary_samples import RedisSampleStore

        return RedisSampleStore(redis_url)
    from policies.canary_samples import MemorySampleStore

    return MemorySampleStore()


def sample_key(alias: str, canary: CanaryConfig) -> str:
    """Samples of one canary step (or shadow phase): every decision starts a fresh count."""
    return f"sg:canary:{alias}:{canary.state.phase}:{canary.state.step}:{canary.state.since!r}"


class Canaries:
    def __init__(self, samples: SampleStore, billing: Billing, metrics: Metrics, rng: random.Random | None = None) -> None:
        self.samples = samples
        self.billing = billing
        self.metrics = metrics
        self._rng = rng or random.Random()
        self._mirrors: dict[str, int] = {}  # alias --> mirrored calls in flight
        self._tasks: set[asyncio.Task[None]] = set()

    def assign(self, ctx: RequestContext, alias: Alias) -> None:
        canary = alias.config.canary
        if canary is None:
            return
        phase = canary.state.phase
        if phase == "canary":
            ctx.arm = assign(canary, alias.name, _sticky(ctx, canary), self._rng)
        elif phase == "shadow" and canary.shadow is not None:
            ctx.arm = "stable"
            ctx.mirror = self._rng.random() < canary.shadow.share and bool(self._mirror_targets(ctx, alias, canary))

    def finished(self, ctx: RequestContext) -> None:
        """Record the request's sample; start its mirror when it is one."""
        alias = ctx.snapshot.router.get(ctx.alias)
        canary = alias.config.canary
        if canary is None or not ctx.attempted or ctx.status == CLIENT_CLOSED:
            return
        candidates = {d.name for d in alias.candidate}
        key = sample_key(alias.name, canary)
        arm: Arm = ctx.arm or "stable"
        tried_candidate = bool(ctx.plan) and ctx.plan[0].name in candidates
        if arm == "candidate" and not tried_candidate:
            arm = "stable"  # the tenant's policy left the candidate out: stable served it
        served = ctx.served
        if arm == "candidate" and (served is None or served.name not in candidates):
            # The candidate failed and stable answered in its place: the candidate's error.
            self.samples.record(key, Sample(arm="candidate", ok=False, latency_ms=ctx.elapsed * 1000, ttft_ms=None, cost_pico=0))
        else:
            ok = ctx.status < 500
            cost = cost_pico(ctx.usage, served.config.price) if ctx.usage is not None and served is not None else 0
            ttft = ctx.ttft * 1000 if ctx.ttft is not None else None
            self.samples.record(key, Sample(arm=arm, ok=ok, latency_ms=ctx.elapsed * 1000, ttft_ms=ttft, cost_pico=cost))
        if ctx.mirror and ctx.status == 200 and canary.shadow is not None:
            self._mirror(ctx, alias, canary, key)

    def _mirror(self, ctx: RequestContext, alias: Alias, canary: CanaryConfig, key: str) -> None:
        assert canary.shadow is not None
        targets = self._mirror_targets(ctx, alias, canary)
        if not targets:
            return
        if self._mirrors.get(alias.name, 0) >= canary.shadow.max_in_flight:
            self.metrics.shadow_requests.labels(alias.name, "shed").inc()
            return
        self._mirrors[alias.name] = self._mirrors.get(alias.name, 0) + 1
        task = asyncio.get_running_loop().create_task(self._call(ctx, alias.name, targets[0], canary, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _mirror_targets(ctx: RequestContext, alias: Alias, canary: CanaryConfig) -> list[Deployment]:
        """The candidate deployments this request may be mirrored to: only where the tenant's privacy class and policy allow them."""
        policy = ctx.snapshot.policies.routing(ctx.principal.tenant)
        plan = ctx.snapshot.router.plan(
            alias.name, RouteHint(session_id=ctx.session_id, body=ctx.body), policy, ctx.self_hosted_only, candidate=True
        )
        names = set(canary.candidate)
        return [d for d in plan.deployments if d.name in names]

    async def _call(self, ctx: RequestContext, alias: str, deployment: Deployment, canary: CanaryConfig, key: str) -> None:
        assert canary.shadow is not None
        request = replace(ctx.engine_request(deployment), request_id=f"{ctx.request_id}-shadow", include_usage=True)
        started = time.perf_counter()
        ttft: float | None = None
        usage: Usage | None = None
        status, error = 200, None
        try:
            if request.stream:
                async for chunk in deployment.engine.stream(request):
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    if chunk.usage is not None:
                        usage = chunk.usage
            else:
                completion = await deployment.engine.generate(request)
                usage = completion.usage
        except GatewayError as exc:
            status, error = exc.status, exc.code
        except Exception as exc:
            status, error = 500, type(exc).__name__
        finally:
            self._mirrors[alias] -= 1
        elapsed = time.perf_counter() - started
        cost = cost_pico(usage, deployment.config.price) if usage is not None else 0
        ok = status < 500
        self.metrics.shadow_requests.labels(alias, "ok" if ok else "error").inc()
        self.samples.record(
            key,
            Sample(
                arm="candidate", ok=ok, latency_ms=elapsed * 1000, ttft_ms=ttft * 1000 if ttft is not None else None, cost_pico=cost
            ),
        )
        self.billing.record_mirrored(ctx, deployment, usage or Usage(), cost, canary.shadow.bill_to, status, error, elapsed, ttft)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.samples.close()


def _sticky(ctx: RequestContext, canary: CanaryConfig) -> str | None:
    """The key that keeps a conversation on one arm: its session, else its user."""
    if canary.sticky == "none":
        return None
    if canary.sticky == "session" and ctx.session_id:
        return ctx.session_id
    user = ctx.body.get("user")
    return user if isinstance(user, str) and user else None
