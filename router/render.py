"""One API surface's envelopes around the pipeline's OpenAI chat form.

Every surface (OpenAI chat, Responses, Anthropic Messages) is served by the
same pipeline, which speaks OpenAI chat completions with engines. A surface
other than chat converts its request to a chat body before the pipeline and
gives the pipeline a renderer, which turns what comes back into the surface's
own response: the whole body for a non-streamed request, and for a stream,
each chunk, the end and an in-band error, already framed for the wire.

OpenAI chat itself has no renderer (``RequestContext.render`` is None): its
chunks are relayed as they come, with no per-chunk call.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from core.errors import GatewayError

# The request record (``router.context.RequestContext``), a parameter so that
# this module need not import the one that refers to it.
Ctx = TypeVar("Ctx", contravariant=True)


class Renderer(Protocol[Ctx]):
    """Per request (a stream renderer keeps state between chunks); used as ``Renderer[RequestContext]``."""

    def unary(self, ctx: Ctx, body: bytes) -> bytes:
        """The surface's response body, from an OpenAI chat completion's JSON."""
        ...

    def chunk(self, ctx: Ctx, data: bytes) -> bytes:
        """Framed events (possibly none: ``b""``) for one OpenAI chat chunk's JSON, usage-only chunks included."""
        ...

    def end(self, ctx: Ctx) -> bytes:
        """Framed closing events of a stream that ended well (what ``data: [DONE]`` is to chat)."""
        ...

    def error(self, ctx: Ctx, exc: GatewayError) -> bytes:
        """A framed in-band error event, after the first byte went out."""
        ...
