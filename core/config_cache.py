"""The response cache's settings: an alias's ``cache``, a tenant's ``cache``, and where entries live.

An alias caches only with a ``cache`` block (``CacheConfig``); a tenant takes
part unless it opts out (``TenantCacheConfig``), and shares entries with other
tenants only through a named scope it opts into. The store section
(``CacheStoreConfig``) says whether entries live in this process or in Redis
(the URL is ``state.redis_url``), and whether the semantic cache's vectors
live in this process or in PostgreSQL with pgvector (``state.postgres_dsn``).

Mode ``semantic`` keeps the exact cache and adds a nearest-neighbour lookup
(``router.semantic_cache``): on an exact miss, the whole conversation (system
prompt included) is embedded by the first of ``embedding``'s deployments the
request may reach, and an answer stored for a conversation at least
``threshold`` similar (cosine) is replayed, if everything else about the two
requests (alias, deployment, tools, sampling fields, shape) is the same.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from core.config_base import PositiveFloat
from core.config_base import Strict as _Strict

KIB = 1024
MIB = 1024 * KIB

# The same shape as a config name (``core.config.Name``), spelled here so this module imports nothing above the ground.
ScopeName = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")]
# Which requests an alias caches: ``deterministic`` those whose answer would not change anyway
# (temperature 0 or a seed; embeddings always), ``always`` every one (the operator accepts replayed samples).
QualifyMode = Literal["deterministic", "always"]
# At most 30 days; an answer older than that belongs in a dataset, not a cache.
TtlSeconds = Annotated[float, msgspec.Meta(gt=0, le=30 * 86_400)]
EntryBytes = Annotated[int, msgspec.Meta(ge=KIB, le=64 * MIB)]


class CacheConfig(_Strict):
    """An alias's response cache: an answer is replayed for the same (or, semantic, a similar) request within ``ttl_s``."""

    mode: Literal["exact", "semantic"] = "exact"
    ttl_s: TtlSeconds = 300.0
    qualify: QualifyMode = "deterministic"
    # Answers larger than this (body or stream payloads, in bytes) are not kept.
    max_entry_bytes: EntryBytes = MIB
    # Semantic only. The deployments that embed a conversation, in order of preference: a request uses the
    # first one it may reach (a self-hosted one when its tenant or PII policy keeps it off cloud deployments).
    embedding: tuple[ScopeName, ...] = ()
    # The least cosine similarity of two conversations for one's answer to be replayed for the other.
    threshold: Annotated[float, msgspec.Meta(ge=0.5, le=1.0)] = 0.95
    # Conversations with more user turns than this are looked up exactly only (an agent's later turns depend on
    # what came before too closely for a near match to be the same question).
    max_turns: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # Requests with tools or tool messages are looked up exactly only, unless this is set.
    allow_tools: bool = False
    # Conversations longer than this (characters of text embedded) are looked up exactly only.
    max_chars: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 16_000
    # The deadline of the embedding call; a slower one is an exact miss, never a wait.
    embedding_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=30)] = 1.0

    def __post_init__(self) -> None:
        if self.mode == "semantic" and not self.embedding:
            raise ValueError("mode 'semantic' needs `embedding`: the deployments that embed a conversation")
        if self.mode == "exact" and self.embedding:
            raise ValueError("`embedding` is for mode 'semantic' only")


class TenantCacheConfig(_Strict):
    """A tenant's part in the response cache.

    ``scope`` names a shared scope: tenants naming the same one see each
    other's entries (of the same alias, deployment and request). A tenant whose
    requests may only reach self-hosted deployments never shares, whatever it
    names here.
    """

    enabled: bool = True
    scope: ScopeName | None = None


class CacheStoreConfig(_Strict):
    """Where cache entries live: in this process (bounded by ``max_bytes``) or in Redis (``state.redis_url``)."""

    backend: Literal["memory", "redis"] = "memory"
    # Memory: the most the entries (keys and values) of this process may hold, least recently used dropped first.
    max_bytes: Annotated[int, msgspec.Meta(ge=MIB)] = 256 * MIB
    # Either backend refuses an entry larger than this (encoded, before compression), whatever the alias allows.
    max_entry_bytes: EntryBytes = 4 * MIB
    # Redis: every key starts with this, so that one Redis may serve several gateways.
    prefix: Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[A-Za-z0-9._:/-]*$")] = "sg:cache:"
    # Redis: entries larger than this are stored zlib-compressed.
    compress_above_bytes: Annotated[int, msgspec.Meta(ge=0)] = 1024
    # Redis: the deadline of each call; a slower store is a miss, never a wait.
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=5)] = 0.1
    # Redis: after a connection failure, calls skip the store (misses at once) for this long.
    retry_after_s: PositiveFloat = 1.0
    # The semantic cache's vectors: in this process, or in PostgreSQL with pgvector (``state.postgres_dsn``).
    index: Literal["memory", "postgres"] = "memory"
    # Memory: the most vectors this process keeps, the oldest dropped first.
    index_max_entries: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 100_000
    # PostgreSQL: the deadline of each call; a slower index is a miss.
    index_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=5)] = 0.5
    # How often expired vectors are swept out.
    index_sweep_s: PositiveFloat = 60.0

    def __post_init__(self) -> None:
        if self.backend == "memory" and self.max_entry_bytes > self.max_bytes:
            raise ValueError("`max_entry_bytes` must not exceed `max_bytes`")
