"""A response cache hit, answered as the deployment's own answer would be: no upstream call.

The entry holds the deployment's answer before anything was restored for the
client who first asked (``router.cache_step``), so each requester's own PII
restore, and the plugins' chunk hooks, apply here as they would to a fresh
answer. A stream replays its stored payloads (the usage chunk among them only
when the stored request asked for it, as the key's stream options say this
one does too) and ends with ``[DONE]``, or, on a surface with a renderer
(Anthropic Messages, translated Responses), through the renderer as a served
stream's chunks are; it is settled before its last bytes
go out, as a served stream is.

An entry may have been stored for a requester with other guardrails (a shared
scope) or before this one's changed: a hit is screened again, a unary one by
the requester's post guardrails (``Pipeline.unary``), a streamed one by its
stream guardrails here. A replay is written in one piece at the end, so a
stream a guardrail ends sends none of its text, only the closing
``content_filter`` chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from router.answers import LastChunk
from router.context import CLIENT_CLOSED, RequestContext
from router.stream_end import with_usage
from serving.base import Completion

if TYPE_CHECKING:
    from router.guardrail_step import GuardrailStep

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


async def replay_stream(pipeline: Settles, ctx: RequestContext, guard: GuardrailStep | None = None) -> AsyncIterator[bytes]:
    """A streamed hit's events, restored for this requester, then ``[DONE]``; ``guard`` screens them."""
    assert ctx.cache is not None and ctx.cache.entry is not None and ctx.served is not None
    chunks = ctx.cache.entry.chunks
    assert chunks is not None
    restore = ctx.restorer.stream() if ctx.restorer is not None and ctx.served.config.privacy == "cloud" else None
    hooks = ctx.snapshot.plugins if ctx.snapshot.plugins.on_chunk else None
    screen = guard.screen(ctx) if guard is not None and ctx.guardrails is not None else None
    render = ctx.render
    ctx.status = CLIENT_CLOSED
    try:
        events: list[bytes] = []
        for stored in chunks:
            if screen is not None and (verdict := screen.feed_chunk(stored)) is not None:
                assert guard is not None
                closing = guard.cut(ctx, screen, verdict, stored)
                await pipeline.complete(ctx)
                yield LastChunk(b"".join(with_usage(ctx, closing)))
                return
            data = stored if restore is None else restore.feed_chunk(stored)
            if hooks is not None:
                data = hooks.chunk(ctx, data)
            events.append(b"data: " + data + b"\n\n" if render is None else render.chunk(ctx, data))
        ctx.status = 200
        if screen is not None and guard is not None:
            guard.screened(ctx, screen)
        await pipeline.complete(ctx)
        held = restore.flush() if restore is not None else None
        if held is not None:
            events.append(b"data: " + held + b"\n\n" if render is None else render.chunk(ctx, held))
        events.append(_DONE if render is None else render.end(ctx))
        yield LastChunk(b"".join(events))  # a whole hit in one write, with the stream's end
    finally:
        pipeline.finish(ctx)
