"""A response cache hit, answered as the deployment's own answer would be: no upstream call.

The entry holds the deployment's answer before anything was restored for the
client who first asked (``router.cache_step``), so each requester's own PII
restore, and the plugins' chunk hooks, apply here as they would to a fresh
answer. A stream replays its stored payloads (the usage chunk among them only
when the stored request asked for it, as the key's stream options say this
one does too) and ends with ``[DONE]``; it is settled before its last bytes
go out, as a served stream is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from router.context import CLIENT_CLOSED, RequestContext
from serving.base import Completion

_DONE = b"data: [DONE]\n\n"


class Settles(Protocol):
    """The pipeline's settlement, as a replayed stream ends (``router.pipeline.Pipeline``)."""

    async def complete(self, ctx: RequestContext) -> None: ...

    def finish(self, ctx: RequestContext) -> asyncio.Task[None] | None: ...


def replayed(ctx: RequestContext) -> Completion:
    """A non-streamed hit's answer, restored for this requester."""
    assert ctx.cache is not None and ctx.cache.entry is not None and ctx.served is not None
    body = ctx.cache.entry.body
    assert body is not None
    if ctx.restorer is not None and ctx.served.config.privacy == "cloud":
        body = ctx.restorer.restore_completion(body)
    return Completion(body=body, usage=ctx.usage)


async def replay_stream(pipeline: Settles, ctx: RequestContext) -> AsyncIterator[bytes]:
    """A streamed hit's events, restored for this requester, then ``[DONE]``."""
    assert ctx.cache is not None and ctx.cache.entry is not None and ctx.served is not None
    chunks = ctx.cache.entry.chunks
    assert chunks is not None
    restore = ctx.restorer.stream() if ctx.restorer is not None and ctx.served.config.privacy == "cloud" else None
    hooks = ctx.snapshot.plugins if ctx.snapshot.plugins.on_chunk else None
    ctx.status = CLIENT_CLOSED
    try:
        events: list[bytes] = []
        for stored in chunks:
            data = stored if restore is None else restore.feed_chunk(stored)
            if hooks is not None:
                data = hooks.chunk(ctx, data)
            events.append(b"data: " + data + b"\n\n")
        ctx.status = 200
        await pipeline.complete(ctx)
        held = restore.flush() if restore is not None else None
        if held is not None:
            events.append(b"data: " + held + b"\n\n")
        events.append(_DONE)
        yield b"".join(events)
    finally:
        pipeline.finish(ctx)
