"""The semantic cache: an exact miss looked up again by what the conversation means.

An alias with ``cache.mode: semantic`` keeps every rule of the exact cache
(``router.cache_step``) and, on an exact miss, asks this module:

1. ``conversation_text``: the whole conversation as one text, system prompt
   included, or None where a near match must not stand in for the request
   (tools or tool messages unless the alias allows them, more user turns than
   ``max_turns``, content that is not text, more than ``max_chars``).
2. ``embedder``: the first of the alias's ``embedding`` deployments that may
   see the body the key is made of. A request that may reach self-hosted
   deployments only (the tenant's routing policy, or its PII step) uses a
   self-hosted one; a cloud embedder is used only where the keyed body is
   what a cloud deployment would get anyway (PII already taken out).
3. ``vector``: that deployment's embedding of the text, within
   ``embedding_timeout_s``; anything else (a timeout, an error, a reply that
   is not one vector) is no vector, and the request goes on as an exact miss.
4. The vector index (``router.semantic_index``) answers the nearest stored
   conversation of the same scope (the tenant, or a scope it shares) and the
   same partition (``cache_key.semantic_partition``: alias, deployment and its
   version, kind, shape, and every field but the conversation) at least
   ``threshold`` similar; its key names the stored answer in the cache store.

A miss that is stored adds its vector under the stored entry's key, after
the entry is written. A vector whose entry has gone (expired, evicted,
corrupted) is dropped when a lookup finds it. Expired vectors are swept out
every ``state.cache.index_sweep_s``.

Nothing here raises into a request, and no vector, text or key reaches a log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import math
import struct
import time
from typing import TYPE_CHECKING

import msgspec
from prometheus_client import CollectorRegistry

from core.config import Config
from core.config_cache import CacheConfig
from router.context import RequestContext
from router.metrics_fast import counter
from router.semantic_index import Match, VectorIndex
from router.semantic_index_memory import MemoryVectorIndex
from router.semantic_index_pg import PgVectorIndex
from serving.base import EngineRequest, JsonObject

if TYPE_CHECKING:
    from policies.routing import Deployment

log = logging.getLogger("sluicegate.semantic_cache")

# The parts of a message's content that are text; any other part (an image, audio) makes it unfit.
_TEXT_PARTS = frozenset({"text", "input_text"})


class _Embedding(msgspec.Struct):
    embedding: list[float] | str


class _Embeddings(msgspec.Struct):
    data: list[_Embedding]


_decode_embeddings = msgspec.json.Decoder(_Embeddings)


class SemanticMetrics:
    def __init__(self, registry: CollectorRegistry, *, fast: bool = False) -> None:
        """``fast``: lock-free counters for one process (``router.metrics_fast``); several workers need prometheus_client's."""
        self.lookups = counter(
            "sluicegate_cache_semantic_lookups_total",
            "Exact misses of semantic-cache aliases, by what the semantic lookup did "
            "(hit, miss, skipped: not fit for a near match, unavailable: no embedder or no vector).",
            ("model", "result"), registry, fast=fast,
        )  # fmt: skip
        self.embedding_tokens = counter(
            "sluicegate_cache_embedding_tokens_total", "Tokens the semantic cache's embedding calls used, by embedding deployment.",
            ("deployment",), registry, fast=fast,
        )  # fmt: skip


def open_vector_index(config: Config) -> VectorIndex:
    """The index ``state.cache.index`` names: this process's memory (the default), or pgvector at ``state.postgres_dsn``."""
    settings = config.state.cache
    if settings.index == "postgres":
        dsn = config.state.dsn()
        assert dsn is not None  # checked by ``config_check``
        return PgVectorIndex(dsn, timeout_s=settings.index_timeout_s, retry_after_s=settings.retry_after_s)
    return MemoryVectorIndex(settings.index_max_entries)


def conversation_text(kind: str, body: JsonObject, config: CacheConfig) -> str | None:
    """The text a request's meaning is embedded from, or None when only an exact match may serve it."""
    if kind == "completion":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        text = prompt if isinstance(prompt, str) else None
    elif kind == "chat":
        text = _chat_text(body, config)
    else:
        return None
    if not text or len(text) > config.max_chars:
        return None
    return text


def _chat_text(body: JsonObject, config: CacheConfig) -> str | None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    if not config.allow_tools and any(body.get(name) for name in ("tools", "functions")):
        return None
    lines: list[str] = []
    turns = 0
    for message in messages:
        if not isinstance(message, dict):
            return None
        role = message.get("role")
        if not isinstance(role, str):
            return None
        if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
            if not config.allow_tools:
                return None
            lines.append(f"{role}: {msgspec.json.encode([message.get('tool_calls'), message.get('function_call')]).decode()}")
        turns += role == "user"
        content = _content_text(message.get("content"))
        if content is None:
            return None
        lines.append(f"{role}: {content}")
    if turns > config.max_turns:
        return None
    return "\n".join(lines)


def _content_text(content: object) -> str | None:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            return None
        texts.append(part["text"])
    return "\n".join(texts)


def embedder(ctx: RequestContext, config: CacheConfig, keyed_on: Deployment, restricted: bool) -> Deployment | None:
    """The first embedding deployment that may see the body keyed on ``keyed_on``'s; None when none may."""
    snapshot = ctx.snapshot
    keyed_body = ctx.source(keyed_on)
    for name in config.embedding:
        deployment = snapshot.deployments.get(name)
        if deployment is None or name in snapshot.failed:
            continue
        if deployment.config.privacy == "self_hosted":
            return deployment
        if not restricted and ctx.source(deployment) is keyed_body:
            return deployment
    return None


def _vector(data: bytes) -> list[float] | None:
    """The one embedding of an OpenAI embeddings reply (floats or base64 float32); None for anything else."""
    try:
        reply = _decode_embeddings.decode(data)
    except msgspec.MsgspecError:
        return None
    if len(reply.data) != 1:
        return None
    value = reply.data[0].embedding
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        if not raw or len(raw) % 4:
            return None
        value = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    if not value or not all(math.isfinite(x) for x in value) or not any(value):
        return None
    return value


class SemanticCache:
    def __init__(self, index: VectorIndex, registry: CollectorRegistry, sweep_s: float = 60.0, *, fast_metrics: bool = False) -> None:
        self.index = index
        self.metrics = SemanticMetrics(registry, fast=fast_metrics)
        self.sweep_s = sweep_s
        self._sweeper: asyncio.Task[None] | None = None

    async def vector(
        self, ctx: RequestContext, config: CacheConfig, body: JsonObject, keyed_on: Deployment, restricted: bool
    ) -> list[float] | None:
        """The embedding of ``body``'s conversation, or None (counted) when it is unfit or none could be had."""
        text = conversation_text(ctx.kind, body, config)
        if text is None:
            self.metrics.lookups.labels(ctx.alias, "skipped").inc()
            return None
        deployment = embedder(ctx, config, keyed_on, restricted)
        if deployment is None:
            self.metrics.lookups.labels(ctx.alias, "unavailable").inc()
            return None
        request = EngineRequest(
            kind="embedding", body={"model": deployment.config.model, "input": text}, request_id=ctx.request_id + "-semantic",
            tenant=ctx.principal.tenant, traceparent=ctx.traceparent, tracestate=ctx.tracestate,
        )  # fmt: skip
        try:
            completion = await asyncio.wait_for(deployment.engine.embed(request), config.embedding_timeout_s)
        except Exception as exc:  # noqa: BLE001 - an embedder that fails makes an exact miss, never an error
            log.warning("semantic cache: embedding deployment %s failed (%s)", deployment.name, type(exc).__name__)
            self.metrics.lookups.labels(ctx.alias, "unavailable").inc()
            return None
        if completion.usage is not None:
            self.metrics.embedding_tokens.labels(deployment.name).inc(completion.usage.prompt_tokens)
        vector = _vector(completion.body)
        if vector is None:
            log.warning("semantic cache: embedding deployment %s answered no single vector", deployment.name)
            self.metrics.lookups.labels(ctx.alias, "unavailable").inc()
        return vector

    async def nearest(self, alias: str, scope: str, partition: str, vector: list[float], threshold: float) -> Match | None:
        try:
            match = await self.index.nearest(scope, partition, vector, threshold)
        except Exception as exc:  # noqa: BLE001 - an index must answer a miss, never fail a request
            log.warning("semantic cache lookup failed (%s): served as a miss", type(exc).__name__)
            match = None
        self.metrics.lookups.labels(alias, "hit" if match is not None else "miss").inc()
        return match

    async def add(self, scope: str, partition: str, vector: list[float], key: str, ttl_s: float) -> None:
        self._sweep_later()
        with contextlib.suppress(Exception):  # a vector not kept is a later miss, nothing more
            await self.index.add(scope, partition, vector, key, time.time() + ttl_s)

    async def forget(self, key: str) -> None:
        """Drop the vector of an entry the store no longer has."""
        with contextlib.suppress(Exception):
            await self.index.delete(key)

    def _sweep_later(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="semantic-cache-sweeper")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_s)
            try:
                await self.index.delete_expired()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("semantic cache sweep failed (%s)", type(exc).__name__)

    async def close(self) -> None:
        task, self._sweeper = self._sweeper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.index.close()
