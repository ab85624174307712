"""The one interface every engine implements, so routing never knows which is which.

Engines speak OpenAI on both sides: they take a validated OpenAI-shaped request
body (``model`` already set to the upstream's own name) and give back
OpenAI-shaped JSON bytes, plus the exact usage when they know it. Relaying bytes
keeps the pass-through path free of re-encoding. Kind ``responses`` (a Responses
API body, answered as a Response object or its typed events) goes only to
engines whose upstream speaks that API (``serves_responses``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias, cast, runtime_checkable

import msgspec

JsonObject: TypeAlias = dict[str, Any]
Kind: TypeAlias = Literal["chat", "completion", "embedding", "responses"]


class PromptTokensDetails(msgspec.Struct, omit_defaults=True):
    cached_tokens: int = 0


class Usage(msgspec.Struct, omit_defaults=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None

    @property
    def cached_tokens(self) -> int:
        details = self.prompt_tokens_details
        return details.cached_tokens if details is not None else 0


def make_usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
    )


def usage_json(usage: Usage) -> JsonObject:
    """OpenAI's usage object. Spelled out because ``Usage`` omits zero fields, and clients expect all of them."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def serves_responses(engine: object) -> bool:
    """Whether ``engine`` takes kind ``responses``: its deployment says the upstream has the Responses API."""
    return getattr(engine, "native_responses", False) is True


@dataclass(slots=True)
class EngineRequest:
    kind: Kind
    body: JsonObject
    request_id: str
    tenant: str = ""
    stream: bool = False
    # The client asked for a final usage chunk; engines always produce one and
    # the router drops it when the client did not ask.
    include_usage: bool = False
    session_id: str | None = None
    # W3C trace context for the upstream call (``traceparent`` / ``tracestate`` headers):
    # the attempt's span when tracing is on, else the client's own, passed on unchanged.
    # Engines in this process ignore it.
    traceparent: str | None = None
    tracestate: str | None = None


@dataclass(slots=True)
class Completion:
    """A whole non-streamed response: OpenAI-shaped JSON bytes and its usage."""

    body: bytes
    usage: Usage | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class StreamChunk:
    """One SSE ``data:`` payload in OpenAI chunk shape (no ``data:`` prefix), or a run of plain events (``events``)."""

    data: bytes
    usage: Usage | None = None
    # True when the chunk exists only to carry usage (empty ``choices``).
    usage_only: bool = False
    # Generated text in this chunk, for counting when an upstream reports no usage.
    # None: not extracted yet (``serving.sse.chunk_text`` reads it from ``data``).
    text: str | None = ""
    finish_reason: str | None = None
    # False when more chunks are already in hand (same network read): the relay
    # then writes them to the client together, in one send.
    batch_end: bool = True
    # 0: ``data`` is one payload. Otherwise ``data`` is that many whole events
    # as the upstream framed them (``data: <payload>\n\n`` each, none with
    # usage or an error), relayed as they are (``serving.sse.singles`` splits them).
    events: int = 0


@dataclass(slots=True)
class Load:
    running: int = 0
    waiting: int = 0


@runtime_checkable
class Engine(Protocol):
    """An inference backend: in-process engine, remote server or cloud provider."""

    name: str
    provider: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def generate(self, request: EngineRequest) -> Completion: ...

    def stream(self, request: EngineRequest) -> AsyncIterator[StreamChunk]: ...

    async def embed(self, request: EngineRequest) -> Completion: ...

    async def abort(self, request_id: str) -> None: ...

    async def health(self) -> bool: ...

    def load(self) -> Load: ...


@dataclass(slots=True, frozen=True)
class Timeouts:
    connect_s: float = 5.0
    read_s: float = 120.0
    total_s: float = 600.0


@dataclass(slots=True)
class EngineSpec:
    """What an engine is built from: the deployment's resolved config.

    ``api_key`` is already resolved from its env/file reference and must never be
    logged or echoed. ``options`` is the provider-specific msgspec Struct.
    """

    name: str
    provider: str
    model: str
    base_url: str = ""
    api_key: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_connections: int = 256
    options: msgspec.Struct | None = None


def stream_batches(engine: Engine, request: EngineRequest, *, framed: bool = False) -> AsyncIterator[list[StreamChunk]]:
    """``engine``'s stream as lists of chunks: its own ``stream_batches`` where it has one, else a chunk per list.

    An engine that reads several chunks at once (an HTTP upstream's network
    read) hands them over in one list, so that the relay takes one step of
    the engine's generator per read, not per chunk. Lists are never empty; a
    chunk's ``batch_end`` still says where the relay writes to the client.
    With ``framed`` such an engine may also hand over a run of plain events
    as the upstream framed them (``StreamChunk.events``), for a relay that
    passes them on untouched; without it every chunk is one payload.
    """
    native = getattr(engine, "stream_batches", None)
    if native is not None:
        if framed:
            return cast("AsyncIterator[list[StreamChunk]]", native(request, framed=True))
        return cast("AsyncIterator[list[StreamChunk]]", native(request))
    return _one_by_one(engine.stream(request))


async def _one_by_one(chunks: AsyncIterator[StreamChunk]) -> AsyncIterator[list[StreamChunk]]:
    try:
        async for chunk in chunks:
            yield [chunk]
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
