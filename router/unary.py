"""One request served to its end without an HTTP client: what batch lines and plugins' model calls share.

``serve_unary`` admits, serves and settles a ``RequestContext`` as
``router.serve.run`` does, but every failure becomes an ``Outcome`` (its
error envelope) instead of being raised; a plugin's ``Reply`` is the answer,
with the alias as its model. Only a cancel is raised (the request is recorded
as the client having gone away).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass

import msgspec

from core.errors import GatewayError, InternalError, error_body
from router.context import CLIENT_CLOSED, RequestContext
from router.pipeline import Pipeline
from router.plugins import ShortCircuit

# Request ids as the HTTP routes make them (random per process, then a counter), from
# a prefix of their own: the routes' module sits above the gateway that owns these callers.
_ID_PREFIX = os.urandom(6).hex()
_id_counter = itertools.count()


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):012x}"


@dataclass(slots=True)
class Outcome:
    status: int
    body: bytes  # the response, or the error envelope
    request_id: str
    error: GatewayError | None = None


async def serve_unary(pipeline: Pipeline, ctx: RequestContext, log: logging.Logger, traceparent: str | None = None) -> Outcome:
    """Admit, serve and settle ``ctx`` (begun here); every failure is an outcome, never raised."""
    pipeline.begin(ctx, traceparent)
    try:
        await pipeline.admit(ctx)
        completion = await pipeline.unary(ctx)
    except ShortCircuit as short:
        ctx.deployment = f"plugin:{short.plugin}"
        await pipeline.complete(ctx)
        return Outcome(200, msgspec.json.encode({**short.reply.body, "model": ctx.alias}), ctx.request_id)
    except GatewayError as exc:
        await pipeline.fail(ctx, exc)
        return Outcome(exc.status, error_body(exc), ctx.request_id, exc)
    except asyncio.CancelledError:
        ctx.status = CLIENT_CLOSED
        pipeline.finish(ctx)
        raise
    except Exception as exc:
        log.error("a request failed unexpectedly: %s", type(exc).__name__, exc_info=exc)
        error = InternalError("The gateway failed to process the request.")
        await pipeline.fail(ctx, error)
        return Outcome(error.status, error_body(error), ctx.request_id, error)
    await pipeline.complete(ctx)
    return Outcome(200, completion.body, ctx.request_id)
