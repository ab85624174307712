"""Trying deployments in order: fallback, retries with backoff, breaker bookkeeping.

Used for unary calls and for opening streams (an attempt there ends when the
first chunk exists), so nothing here can ever retry after a byte has reached
the client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from policies.routing import Deployment
from router.errors import GatewayError, NoHealthyDeployment, UpstreamRateLimited
from router.metrics import Metrics
from serving.retry import RetryPolicy

T = TypeVar("T")


def record_failure(deployment: Deployment, exc: GatewayError, metrics: Metrics) -> None:
    metrics.upstream_errors.labels(deployment.name, exc.code or "error").inc()
    if isinstance(exc, UpstreamRateLimited):
        deployment.breaker.cool_down(exc.retry_after if exc.retry_after is not None else 1.0)
    elif exc.retryable:
        deployment.breaker.record_failure()
    else:
        # The upstream answered: it is healthy even if it refused this request.
        deployment.breaker.record_success()


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
) -> tuple[T, Deployment]:
    attempts = 0
    last: GatewayError | None = None
    while True:
        tried = attempts
        for deployment in plan:
            if attempts >= policy.max_attempts:
                break
            if not deployment.breaker.available():
                continue
            attempts += 1
            started = time.perf_counter()
            try:
                result = await run(deployment)
            except GatewayError as exc:
                record_failure(deployment, exc, metrics)
                if not exc.retryable:
                    raise
                last = exc
                continue
            deployment.breaker.record_success()
            deployment.latency.observe(time.perf_counter() - started)
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
