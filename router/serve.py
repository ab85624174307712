"""Run one admitted request through the pipeline and answer it: shared by every API surface.

The surface's route authenticates, decodes its own shape and builds the
``RequestContext`` (a chat body for the pipeline, and a renderer unless it is
OpenAI chat itself); from there every surface is served the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from litestar.types import ASGIApp

from core.errors import GatewayError, InternalError
from router.answers import Headers, JsonAnswer, StreamAnswer
from router.context import CLIENT_CLOSED, RequestContext
from router.gateway import Gateway
from router.plugin_reply import reply_body, reply_stream
from router.plugins import ShortCircuit

if TYPE_CHECKING:
    from router.metrics import Metrics

_JSON_TYPE = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


async def run(gateway: Gateway, ctx: RequestContext, headers: Mapping[str, str]) -> ASGIApp:
    """Admit, serve (streamed or not) and settle; a ``GatewayError`` before the first byte is raised to the route.

    The request continues the W3C trace context in ``headers`` (the client's).
    """
    pipeline = gateway.pipeline
    ctx.client_headers = headers
    traceparent = headers.get("traceparent")
    pipeline.begin(ctx, traceparent, None if traceparent is None else headers.get("tracestate"))
    try:
        await pipeline.admit(ctx)
        if ctx.stream:
            relay = await pipeline.open_stream(ctx)
            return StreamAnswer(relay, response_headers(ctx, streaming=True, metrics=pipeline.metrics))
        completion = await pipeline.unary(ctx)
    except ShortCircuit as short:
        # A plugin answered: nothing was served, nothing is charged but what its body says.
        ctx.deployment = f"plugin:{short.plugin}"
        await pipeline.complete(ctx)
        if ctx.stream:
            return StreamAnswer(reply_stream(ctx, short.reply.body), response_headers(ctx, streaming=True, metrics=pipeline.metrics))
        return JsonAnswer(reply_body(ctx, short.reply.body), response_headers(ctx, streaming=False, metrics=pipeline.metrics))
    except GatewayError as exc:
        await pipeline.fail(ctx, exc)
        raise
    except asyncio.CancelledError:
        # The client went away: the request is still recorded, once, and nothing it holds is left open.
        ctx.status = CLIENT_CLOSED
        pipeline.finish(ctx)
        raise
    except Exception:
        # A failure the route renders as a 500: recorded as one.
        ctx.status, ctx.error = InternalError.status, InternalError.code
        pipeline.finish(ctx)
        raise
    await pipeline.complete(ctx)
    body = completion.body if ctx.render is None else ctx.render.unary(ctx, completion.body)
    return JsonAnswer(body, response_headers(ctx, streaming=False, metrics=pipeline.metrics))


def response_headers(ctx: RequestContext, *, streaming: bool, metrics: Metrics | None = None) -> Headers:
    """The gateway's own headers: request id, deployment, config version, canary arm, route reason, cache result.

    With ``metrics``, also what the gateway added (``x-sluicegate-overhead-ms``,
    and ``sluicegate_overhead_seconds``): the time since the request began less
    the time in upstream attempts, so far: a whole non-streamed answer
    (settlement included), a stream's time before its first byte.
    """
    headers = [
        (b"x-request-id", ctx.request_id.encode()),
        (b"x-sluicegate-deployment", ctx.deployment.encode()),
        (b"x-sluicegate-config-version", ctx.snapshot.header),
    ]
    if ctx.arm is not None:
        headers.append((b"x-sluicegate-canary", b"mirrored" if ctx.mirror else ctx.arm.encode()))
    if ctx.route_reason:
        headers.append((b"x-sluicegate-route-reason", ctx.route_reason.encode()))
    if ctx.cache is not None:
        headers.append((b"x-sluicegate-cache", ctx.cache.header))
    if metrics is not None:
        overhead = time.perf_counter() - ctx.started - ctx.upstream_s
        (metrics.overhead_stream if streaming else metrics.overhead_unary).observe(overhead)
        headers.append((b"x-sluicegate-overhead-ms", b"%.3f" % (overhead * 1000)))
    if streaming:
        headers += _SSE_HEADERS
    else:
        headers.append(_JSON_TYPE)
    return headers
