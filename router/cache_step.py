"""The exact response cache as a pipeline step: look up after admission, store once a request is settled.

An alias caches only with a ``cache`` block; a request of any other alias
never reaches this module (the pipeline checks ``alias.config.cache``). For
one that does, ``ResponseCache.lookup`` runs last in admission, after the
limits and budget were reserved (a hit still counts against RPM): it decides
whether the request may use the cache (``Cache-Control: no-store`` from the
client, a request that does not qualify under the alias's ``qualify``, a
tenant that opted out, a native Responses request or a batch line: all
``bypass``), keys it (``router.cache_key``) on the body the first planned
deployment would get, after the PII step, and looks the key up unless the
client asked ``no-cache`` (a refresh). ``ctx.cache`` then says what happened
(``hit``, ``miss``, ``bypass``): the response header, the ledger row and the
metrics read it there. A hit is served by ``router.cache_replay``. An alias in mode ``semantic``
looks an exact miss up again by meaning (``router.semantic_cache``).

A miss is stored once settled (``recorded``, a billing ``after_record``
hook from the first config with a cache on, when the cost is known): a unary answer as the deployment sent it,
before masked values were restored for the client, or the payloads of a
stream that completed with status 200 (never one cut off by a budget), and
only under the key of the deployment that answered. Writes run in the
background, kept until ``close`` drains them. A store that is down answers a
miss; nothing here raises into a request.

OpenAI chat, completions and embeddings are cached, and so are Anthropic
Messages and Responses requests served by translation to chat (each replay
rendered for its own surface, under its own response id); a Responses
request relayed to an upstream's own Responses API, and batch lines (billed
at their own price), are ``bypass``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from core.config import Config, Price
from router.cache_key import cache_key, cache_scope, qualifies, semantic_partition
from router.cache_state import ENTRY_ID_CHARS, CacheState
from router.cache_store import CacheEntry, CacheStore
from router.cache_store_memory import MemoryCacheStore
from router.cache_store_redis import RedisCacheStore
from router.context import RequestContext
from router.metrics_fast import counter
from router.semantic_cache import SemanticCache
from serving.base import JsonObject
from serving.sse import singles

if TYPE_CHECKING:
    from policies.routing import Alias, Deployment

log = logging.getLogger("sluicegate.cache")

_KINDS = frozenset({"chat", "completion", "embedding"})
_FREE = Price()


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry, *, fast: bool = False) -> None:
        """``fast``: lock-free counters for one process (``router.metrics_fast``); several workers need prometheus_client's."""
        self.requests = counter(
            "sluicegate_cache_requests_total", "Requests of aliases with a response cache, by what the cache did.",
            ("model", "result"), registry, fast=fast,
        )  # fmt: skip
        self.bytes = counter(
            "sluicegate_cache_bytes_total", "Bytes of cached answers replayed (served) and kept (stored).",
            ("model", "direction"), registry, fast=fast,
        )  # fmt: skip


def open_cache_store(config: Config) -> CacheStore:
    """The store ``state.cache`` names: this process's memory (the default), or Redis at ``state.redis_url``."""
    settings = config.state.cache
    if settings.backend == "redis":
        url = config.state.redis()
        assert url is not None  # checked by ``cross_check``
        return RedisCacheStore(
            url, settings.prefix, max_entry_bytes=settings.max_entry_bytes, compress_above_bytes=settings.compress_above_bytes,
            timeout_s=settings.timeout_s, retry_after_s=settings.retry_after_s,
        )  # fmt: skip
    return MemoryCacheStore(settings.max_bytes, settings.max_entry_bytes)


def directives(headers: Mapping[str, str] | None) -> frozenset[str]:
    """The client's ``Cache-Control`` directives, lower-cased, without values."""
    value = headers.get("cache-control") if headers is not None else None
    if not value:
        return frozenset()
    return frozenset(part.split("=", 1)[0].strip().lower() for part in value.split(","))


class ResponseCache:
    def __init__(
        self, store: CacheStore, registry: CollectorRegistry, semantic: SemanticCache | None = None, *, fast_metrics: bool = False
    ) -> None:
        self.store = store
        self.semantic = semantic
        self.metrics = CacheMetrics(registry, fast=fast_metrics)
        self._writes: set[asyncio.Task[None]] = set()

    def follow(self, config: Config, hooks: list[Callable[[RequestContext], None]]) -> None:
        """Be handed settled requests (billing's ``hooks``) once an alias of ``config`` caches: until then, no hook."""
        if self.recorded not in hooks and any(model.cache is not None for model in config.models):
            hooks.append(self.recorded)

    async def lookup(self, ctx: RequestContext, alias: Alias, self_hosted_only: bool) -> None:
        """Decide, key and look up (``ctx.cache``); a hit names its deployment and usage on ``ctx``."""
        config = alias.config.cache
        assert config is not None
        price = alias.config.cache_price or _FREE
        state = ctx.cache = CacheState("bypass", config, price)
        asked = directives(ctx.client_headers)
        deployment = ctx.plan[0]
        key = None
        restricted = self_hosted_only or ctx.self_hosted_only
        if "no-store" not in asked and _cacheable(ctx) and qualifies(ctx.body, config.qualify, kind=ctx.kind):
            tenant = ctx.principal.tenant
            scope = cache_scope(tenant, ctx.snapshot.policies.cache(tenant), restricted)
            key = _key(ctx, scope, deployment) if scope is not None else None
            state.scope = scope
        if key is None:
            self.metrics.requests.labels(ctx.alias, "bypass").inc()
            return
        state.result, state.key, state.keyed_on = "miss", key, deployment
        look = "no-cache" not in asked
        entry = await self._get(key) if look else None
        if entry is None and config.mode == "semantic" and self.semantic is not None:
            entry = await self._semantic(ctx, state, deployment, restricted, look)
        if entry is None or entry.deployment != deployment.name or entry.streamed != ctx.stream:
            self.metrics.requests.labels(ctx.alias, "miss").inc()
            return
        assert state.key is not None
        state.result, state.entry, state.entry_id = "hit", entry, state.key[:ENTRY_ID_CHARS]
        ctx.served, ctx.deployment, ctx.usage = deployment, deployment.name, entry.usage
        self.metrics.requests.labels(ctx.alias, "hit").inc()
        self.metrics.bytes.labels(ctx.alias, "served").inc(entry.payload_bytes())

    async def _semantic(
        self, ctx: RequestContext, state: CacheState, deployment: Deployment, restricted: bool, look: bool
    ) -> CacheEntry | None:
        """Embed the conversation (kept on ``state`` for the store) and, unless refreshing, replay the nearest answer."""
        semantic = self.semantic
        assert semantic is not None and state.scope is not None
        body = _keyed_body(ctx, deployment)
        partition = semantic_partition(ctx.alias, deployment.name, deployment.version, ctx.kind, body)
        if partition is None:
            return None
        vector = await semantic.vector(ctx, state.config, body, deployment, restricted)
        if vector is None:
            return None
        state.vector, state.partition = vector, partition
        if not look:
            return None
        match = await semantic.nearest(ctx.alias, state.scope, partition, vector, state.config.threshold)
        if match is None:
            return None
        key, similarity = match
        try:
            entry = await self.store.get(key)
        except Exception as exc:  # noqa: BLE001 - a store must answer a miss, never fail a request
            log.warning("response cache lookup failed (%s): served as a miss", type(exc).__name__)
            return None
        if entry is None:
            await semantic.forget(key)  # its answer expired or was dropped: the vector leads nowhere
            return None
        state.key, state.similarity = key, similarity
        return entry

    async def _get(self, key: str) -> CacheEntry | None:
        try:
            return await self.store.get(key)
        except Exception as exc:  # noqa: BLE001 - a store must answer a miss, never fail a request
            log.warning("response cache lookup failed (%s): served as a miss", type(exc).__name__)
            return None

    def recorded(self, ctx: RequestContext) -> None:
        """A billing ``after_record`` hook: keep a settled miss's answer, in the background."""
        state = ctx.cache
        served = ctx.served
        if state is None or state.result != "miss" or served is None or ctx.status != 200 or ctx.error is not None:
            return
        entry = self._entry(ctx, state, served)
        if entry is None or entry.payload_bytes() > state.config.max_entry_bytes:
            return
        key = state.key if served is state.keyed_on else _key(ctx, state.scope, served)
        if key is None:
            return
        state.entry_id = key[:ENTRY_ID_CHARS]
        # The vector is of the conversation as keyed for the planned deployment: filed only if that one answered.
        semantic = (state.scope, state.partition, state.vector) if served is state.keyed_on else None
        task = asyncio.get_running_loop().create_task(self._put(ctx.alias, key, entry, state.config.ttl_s, semantic))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    @staticmethod
    def _entry(ctx: RequestContext, state: CacheState, served: Deployment) -> CacheEntry | None:
        created = time.time()
        if ctx.stream:
            include_usage = ctx.include_usage
            # What the client was sent (before restore and plugins), as each later requester's replay starts from.
            chunks = tuple(c.data for c in singles(ctx.generated) if include_usage or not c.usage_only)
            if not chunks:
                return None
            return CacheEntry(deployment=served.name, created_at=created, cost=ctx.cost, usage=ctx.usage, chunks=chunks)
        if state.body is None:
            return None
        return CacheEntry(deployment=served.name, created_at=created, cost=ctx.cost, usage=ctx.usage, body=state.body)

    async def _put(
        self, alias: str, key: str, entry: CacheEntry, ttl_s: float, semantic: tuple[str | None, str | None, list[float] | None] | None
    ) -> None:
        try:
            stored = await self.store.put(key, entry, ttl_s)
        except Exception as exc:  # noqa: BLE001 - a write that fails is an entry not kept, nothing more
            log.warning("response cache write failed (%s)", type(exc).__name__)
            return
        if not stored:
            return
        self.metrics.bytes.labels(alias, "stored").inc(entry.payload_bytes())
        if semantic is not None and self.semantic is not None:
            scope, partition, vector = semantic
            if scope is not None and partition is not None and vector is not None:
                await self.semantic.add(scope, partition, vector, key, ttl_s)  # after the entry: a match always finds it

    async def close(self) -> None:
        """Finish the writes under way, then close the store."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)
        await self.store.close()
        if self.semantic is not None:
            await self.semantic.close()


def _cacheable(ctx: RequestContext) -> bool:
    """Chat, completions and embeddings, whichever surface renders them; a native Responses request or a batch is not cached."""
    return type(ctx) is RequestContext and ctx.kind in _KINDS


def _keyed_body(ctx: RequestContext, deployment: Deployment) -> JsonObject:
    """``ctx`` as ``deployment`` would be asked: its post-PII body, with the completion bound a budget set.

    A surface that always takes the usage chunk (its renderer reports usage)
    asks for it without saying so in the body: the key says so, as the entry
    it stores holds that chunk.
    """
    body = ctx.source(deployment)
    if ctx.max_tokens is not None:
        body = {**body, "max_tokens": ctx.max_tokens}
    if ctx.stream and ctx.include_usage:
        options = body.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage") is True):
            body = {**body, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}
    return body


def _key(ctx: RequestContext, scope: str | None, deployment: Deployment) -> str | None:
    """The key of ``ctx`` as ``deployment`` would be asked."""
    if scope is None:
        return None
    return cache_key(scope, ctx.alias, deployment.name, deployment.version, ctx.kind, _keyed_body(ctx, deployment))
