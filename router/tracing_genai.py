"""The OpenTelemetry GenAI semantic conventions: what an inference span is named and what it carries.

Version followed: the GenAI client spans of semantic-conventions v1.37.0, as
continued in the semantic-conventions-genai repository (Development status),
i.e. what instrumentations emit under
``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental``:
``gen_ai.provider.name`` (not the older ``gen_ai.system``), span names
``{gen_ai.operation.name} {gen_ai.request.model}``, and content as
``gen_ai.input.messages`` / ``gen_ai.output.messages`` (``router.tracing_content``),
not the older prompt and completion events. Sluicegate emitted no earlier
GenAI version, so it emits this one only.

Only what a span needs is read from a reply: its id, model and finish reasons,
with small msgspec structs that skip the rest.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from serving.base import JsonObject, Kind, StreamChunk, serves_responses
from serving.sse import chunk_text

if TYPE_CHECKING:
    from policies.routing import Deployment

Attributes = dict[str, Any]

# The request's kind --> gen_ai.operation.name (Responses and Anthropic Messages are chat).
OPERATIONS: dict[Kind, str] = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings", "responses": "chat"}

# Sluicegate's provider --> gen_ai.provider.name: the conventions' well-known values where one
# applies (an OpenAI-compatible server speaks OpenAI's flavour), the engine's own name for
# self-hosted engines the conventions do not list.
_PROVIDERS = {
    "openai": "openai",
    "openai_compatible": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "vllm": "vllm",
    "llamacpp": "llama.cpp",
    "triton": "triton",
}
# Engines that run in this process: no server to name.
_IN_PROCESS = frozenset({"vllm", "llamacpp", "plugin"})
# Where an engine goes when its deployment names no base_url.
_DEFAULT_URLS = {
    "openai": "https://api.openai.com",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
}
_DEFAULT_PORTS = {"https": 443, "http": 80}


def upstream_kind(kind: Kind, deployment: Deployment) -> Kind:
    """The kind ``deployment`` was sent: a Responses request goes as chat to one without the Responses API."""
    if kind == "responses" and not serves_responses(deployment.engine):
        return "chat"
    return kind


def upstream_attributes(deployment: Deployment) -> Attributes:
    """``gen_ai.provider.name`` and, for an engine over the network, ``server.address`` / ``server.port``.

    Shared and cached: callers copy it, never change it.
    """
    config = deployment.config
    if config.provider == "plugin":
        provider = getattr(deployment.engine, "provider", "plugin")
        return {"gen_ai.provider.name": provider if isinstance(provider, str) else "plugin"}
    vertex = (config.options or {}).get("vertex") if config.provider == "gemini" else None
    location = vertex.get("location") if isinstance(vertex, dict) else None
    return _upstream(config.provider, config.base_url, location if isinstance(location, str) else None)


def provider_name(deployment: Deployment) -> str:
    """``gen_ai.provider.name`` of ``deployment``: the one list spans and metrics share."""
    name: str = upstream_attributes(deployment)["gen_ai.provider.name"]
    return name


@functools.lru_cache(maxsize=512)
def _upstream(provider: str, base_url: str, vertex_location: str | None) -> Attributes:
    name = _PROVIDERS.get(provider, provider)
    url = base_url or _DEFAULT_URLS.get(provider, "")
    if vertex_location is not None:
        name = "gcp.vertex_ai"
        region = "" if vertex_location == "global" else f"{vertex_location}-"
        url = base_url or f"https://{region}aiplatform.googleapis.com"
    attributes: Attributes = {"gen_ai.provider.name": name}
    if provider in _IN_PROCESS or not url:
        return attributes
    # A Triton target is host:port, without a scheme.
    parts = urlsplit(url if "://" in url else f"//{url}")
    try:
        host, port = parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # a port that is not a number: the address is still worth naming
        host, port = parts.hostname, None
    if host:
        attributes["server.address"] = host
        if port is not None:
            attributes["server.port"] = port
    return attributes


# Request settings a client may set --> their attributes, with the type they must have.
_NUMBERS: tuple[tuple[str, str, type], ...] = (
    ("max_tokens", "gen_ai.request.max_tokens", int),
    ("max_completion_tokens", "gen_ai.request.max_tokens", int),
    ("max_output_tokens", "gen_ai.request.max_tokens", int),
    ("temperature", "gen_ai.request.temperature", float),
    ("top_p", "gen_ai.request.top_p", float),
    ("frequency_penalty", "gen_ai.request.frequency_penalty", float),
    ("presence_penalty", "gen_ai.request.presence_penalty", float),
    ("seed", "gen_ai.request.seed", int),
)
_OUTPUT_TYPES = {"text": "text", "json_object": "json", "json_schema": "json"}


def request_attributes(kind: Kind, body: JsonObject) -> Attributes:
    """What the client asked for, as the conventions name it: only the settings it set."""
    out: Attributes = {}
    for key, name, wanted in _NUMBERS:
        value = body.get(key)
        if value is None or isinstance(value, bool):
            continue
        if wanted is int and isinstance(value, int):
            out[name] = value
        elif wanted is float and isinstance(value, (int, float)):
            out[name] = float(value)
    if kind == "embedding":
        encoding, dimensions = body.get("encoding_format"), body.get("dimensions")
        if isinstance(encoding, str):
            out["gen_ai.request.encoding_formats"] = [encoding]
        if isinstance(dimensions, int) and not isinstance(dimensions, bool):
            out["gen_ai.embeddings.dimension.count"] = dimensions
        return out
    n, stop, response_format = body.get("n"), body.get("stop"), body.get("response_format")
    if isinstance(n, int) and not isinstance(n, bool) and n != 1:
        out["gen_ai.request.choice.count"] = n
    if isinstance(stop, str):
        out["gen_ai.request.stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop and all(isinstance(s, str) for s in stop):
        out["gen_ai.request.stop_sequences"] = stop
    if isinstance(response_format, dict) and response_format.get("type") in _OUTPUT_TYPES:
        out["gen_ai.output.type"] = _OUTPUT_TYPES[response_format["type"]]
    return out


class _Choice(msgspec.Struct):
    finish_reason: str | None = None


class _Incomplete(msgspec.Struct):
    reason: str | None = None


class _Reply(msgspec.Struct):
    """A chat or text completion, an embeddings list, or a Response object: what a span reads of it."""

    id: str | None = None
    model: str | None = None
    choices: list[_Choice] = []
    status: str | None = None  # of a Response
    incomplete_details: _Incomplete | None = None


class _Event(msgspec.Struct):
    """A stream's first or last chunk: a chat chunk, or a Responses event carrying its Response."""

    id: str | None = None
    model: str | None = None
    response: _Reply | None = None


_reply_decoder = msgspec.json.Decoder(_Reply)
_event_decoder = msgspec.json.Decoder(_Event)
# A Response's status --> a finish reason as chat completions spell them.
_RESPONSE_ENDS = {"completed": "stop", "failed": "error", "cancelled": "error"}
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}
# How far back from a stream's end finish reasons are looked for.
_TAIL = 8


def _response_fields(reply: _Reply, out: Attributes) -> None:
    if reply.id:
        out["gen_ai.response.id"] = reply.id
    if reply.model:
        out["gen_ai.response.model"] = reply.model
    if reply.choices:
        reasons = [c.finish_reason for c in reply.choices if c.finish_reason]
        if reasons:
            out["gen_ai.response.finish_reasons"] = reasons
    elif reply.status is not None:
        if reply.status == "incomplete":
            why = reply.incomplete_details.reason if reply.incomplete_details is not None else None
            reason = _INCOMPLETE.get(why or "", "length")
        else:
            reason = _RESPONSE_ENDS.get(reply.status, reply.status)
        out["gen_ai.response.finish_reasons"] = [reason]


def reply_attributes(body: bytes) -> Attributes:
    """``gen_ai.response.*`` of a whole reply; nothing of a body that is not one."""
    out: Attributes = {}
    try:
        reply = _reply_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return out
    _response_fields(reply, out)
    return out


def _event(data: bytes) -> _Event | None:
    try:
        return _event_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def stream_attributes(kind: Kind, chunks: list[StreamChunk]) -> Attributes:
    """``gen_ai.response.*`` of a stream: id and model from its first chunk, finish reasons from its last ones."""
    out: Attributes = {}
    if not chunks:
        return out
    first = _event(chunks[0].data)
    if first is not None:
        head = first.response if first.response is not None else first
        if head.id:
            out["gen_ai.response.id"] = head.id
        if head.model:
            out["gen_ai.response.model"] = head.model
    if kind == "responses":
        last = _event(chunks[-1].data)  # the terminal event carries the Response and its status
        if last is not None and last.response is not None:
            _response_fields(last.response, out)
        return out
    reasons = finish_reasons(chunks)
    if reasons:
        out["gen_ai.response.finish_reasons"] = reasons
    return out


def finish_reasons(chunks: list[StreamChunk]) -> list[str]:
    """The finish reasons of a chat or text stream, reading back from its end.

    Finish reasons come in the last chunks with choices; chunks relayed
    unread are decoded here (``chunk_text``), a few at most: the walk stops at
    the first chunk with text once a reason was found, and after
    ``_TAIL`` chunks without one (a stream cut short has none).
    """
    reasons: list[str] = []
    read = 0
    for chunk in reversed(chunks):
        if chunk.usage_only:
            continue
        text = chunk_text(chunk)
        if chunk.finish_reason is not None:
            reasons.append(chunk.finish_reason)
        elif (reasons and text) or read >= _TAIL:
            break
        read += 1
    reasons.reverse()
    return reasons
