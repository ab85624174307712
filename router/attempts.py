"""Trying deployments in order: fallback, retries with backoff, breaker bookkeeping.

Used for unary calls and for opening streams (an attempt there ends when the
first chunk exists), so nothing here can ever retry after a byte has reached
the client.

Breaker accounting: a request counts at most once per deployment however often
it is retried there; a failure that shows the deployment down counts as it
comes, one the request may have caused by itself is the breaker's to weigh by
tenant (``CircuitBreaker.record_suspect``). An open breaker is left through
the engine's health probe, never through a client request.

On a traced request each try is a span of its own (``router.context.Trace``),
and the upstream call names it as its parent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from core.errors import GatewayError, NoHealthyDeployment, UpstreamRateLimited
from policies.routing import Deployment
from router.metrics import Metrics
from serving.retry import RetryPolicy

if TYPE_CHECKING:
    from router.context import Trace

T = TypeVar("T")


def record_failure(deployment: Deployment, exc: GatewayError, metrics: Metrics, tenant: str, counted: set[str]) -> None:
    """Book one failed attempt; ``counted`` names the deployments this request already counted against."""
    metrics.upstream_errors.labels(deployment.name, exc.code or "error").inc()
    breaker = deployment.breaker
    if isinstance(exc, UpstreamRateLimited):
        breaker.cool_down(exc.retry_after if exc.retry_after is not None else 1.0)
    elif not exc.retryable:
        # The upstream answered: it is healthy even if it refused this request.
        breaker.record_success()
    elif deployment.name not in counted:
        counted.add(deployment.name)
        if exc.deployment_down:
            breaker.record_failure()
        else:
            breaker.record_suspect(tenant)


async def ready(deployment: Deployment) -> bool:
    """May this request go to the deployment now? Runs the health probe when an open breaker is due one."""
    breaker = deployment.breaker
    if breaker.available():
        return True
    if not breaker.claim_probe():
        return False
    try:
        up = await deployment.engine.health()
    except Exception:  # noqa: BLE001 - a probe that fails in any way says the deployment is down
        up = False
    except BaseException:
        breaker.probe_result(None)  # cancelled: no answer, the next request probes
        raise
    breaker.probe_result(up)
    return breaker.available()


def unavailable(alias: str, deployments: list[Deployment]) -> GatewayError:
    """Nothing could be tried: rate-limited upstreams say so with their Retry-After."""
    waits = [d.breaker.cooldown_remaining() for d in deployments]
    cooling = [w for w in waits if w > 0]
    if cooling and len(cooling) == len(waits):
        return UpstreamRateLimited(f"Every deployment of `{alias}` is rate limited upstream.", retry_after=min(cooling))
    return NoHealthyDeployment(f"No deployment of `{alias}` is available right now.", retry_after=1.0)


async def attempt(
    plan: list[Deployment],
    run: Callable[[Deployment], Awaitable[T]],
    policy: RetryPolicy,
    metrics: Metrics,
    alias: str,
    tenant: str,
    trace: Trace | None = None,
) -> tuple[T, Deployment]:
    """Run ``run`` on the plan's deployments in order, again after a backoff, until one succeeds.

    ``trace`` (None unless the request is traced) gets one span per try, numbered from 1.
    """
    attempts = 0
    last: GatewayError | None = None
    counted: set[str] = set()
    while True:
        tried = attempts
        for deployment in plan:
            if attempts >= policy.max_attempts:
                break
            if not await ready(deployment):
                continue
            attempts += 1
            if trace is not None:
                trace.attempt(deployment, attempts)
            started = time.perf_counter()
            try:
                result = await run(deployment)
            except GatewayError as exc:
                if trace is not None:
                    trace.attempt_failed(exc)
                record_failure(deployment, exc, metrics, tenant, counted)
                if not exc.retryable:
                    raise
                last = exc
                continue
            deployment.breaker.record_success()
            deployment.latency.observe(time.perf_counter() - started)
            if trace is not None:
                trace.attempt_succeeded()
            return result, deployment
        if last is None:
            raise unavailable(alias, plan)
        if attempts == tried:
            # Every deployment is now open-circuited or cooling down.
            raise last
        delay = policy.delay(attempts, last.retry_after)
        if delay is None:
            raise last
        await asyncio.sleep(delay)
