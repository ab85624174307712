"""The response cache's settings: defaults, and refusals that name the key."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from core.config_cache import MIB, CacheConfig, CacheStoreConfig, TenantCacheConfig


def refusal(kind: type[msgspec.Struct], raw: dict[str, Any]) -> str:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(raw, kind)
    return str(info.value)


def test_alias_cache_defaults() -> None:
    config = msgspec.convert({}, CacheConfig)
    assert (config.mode, config.ttl_s, config.qualify, config.max_entry_bytes) == ("exact", 300.0, "deterministic", MIB)


def test_alias_cache_from_yaml() -> None:
    config = msgspec.yaml.decode(b"mode: exact\nttl_s: 60\nqualify: always\nmax_entry_bytes: 2048\n", type=CacheConfig)
    assert (config.ttl_s, config.qualify, config.max_entry_bytes) == (60.0, "always", 2048)


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"mode": "fuzzy"}, "$.mode"),
        ({"mode": "semantic"}, "`embedding`"),  # a semantic cache names who embeds
        ({"embedding": ["e"]}, "mode 'semantic' only"),
        ({"mode": "semantic", "embedding": ["e"], "threshold": 0.2}, "$.threshold"),
        ({"mode": "semantic", "embedding": ["e"], "threshold": 1.5}, "$.threshold"),
        ({"mode": "semantic", "embedding": ["e"], "max_turns": 0}, "$.max_turns"),
        ({"mode": "semantic", "embedding": ["e"], "embedding_timeout_s": 0}, "$.embedding_timeout_s"),
        ({"mode": "semantic", "embedding": [""]}, "$.embedding[0]"),
        ({"ttl_s": 0}, "$.ttl_s"),
        ({"ttl_s": -5}, "$.ttl_s"),
        ({"ttl_s": 31 * 86_400}, "$.ttl_s"),
        ({"ttl_s": "5m"}, "$.ttl_s"),
        ({"qualify": "sometimes"}, "$.qualify"),
        ({"max_entry_bytes": 10}, "$.max_entry_bytes"),
        ({"max_entry_bytes": 65 * MIB}, "$.max_entry_bytes"),
    ],
)
def test_alias_cache_refusals_name_the_key(raw: dict[str, Any], key: str) -> None:
    assert key in refusal(CacheConfig, raw)


def test_semantic_cache_from_yaml() -> None:
    raw = b"mode: semantic\nembedding: [embed-local, embed-cloud]\nthreshold: 0.9\nmax_turns: 3\nallow_tools: true\n"
    config = msgspec.yaml.decode(raw, type=CacheConfig)
    assert (config.mode, config.embedding, config.threshold) == ("semantic", ("embed-local", "embed-cloud"), 0.9)
    assert (config.max_turns, config.allow_tools, config.max_chars, config.embedding_timeout_s) == (3, True, 16_000, 1.0)
    defaults = msgspec.convert({"mode": "semantic", "embedding": ["e"]}, CacheConfig)
    assert (defaults.threshold, defaults.max_turns, defaults.allow_tools) == (0.95, 1, False)
    store = msgspec.convert({"index": "postgres"}, CacheStoreConfig)
    assert (store.index, store.index_timeout_s, store.index_sweep_s) == ("postgres", 0.5, 60.0)
    assert "$.index" in refusal(CacheStoreConfig, {"index": "faiss"})


def test_unknown_keys_are_refused_by_name() -> None:
    assert "ttl" in refusal(CacheConfig, {"ttl": 60})
    assert "shared" in refusal(TenantCacheConfig, {"shared": True})
    assert "url" in refusal(CacheStoreConfig, {"url": "redis://x"})


def test_tenant_cache() -> None:
    assert msgspec.convert({}, TenantCacheConfig) == TenantCacheConfig(enabled=True, scope=None)
    assert msgspec.convert({"enabled": False}, TenantCacheConfig).enabled is False
    assert msgspec.convert({"scope": "team-a"}, TenantCacheConfig).scope == "team-a"
    assert "$.scope" in refusal(TenantCacheConfig, {"scope": ""})
    assert "$.scope" in refusal(TenantCacheConfig, {"scope": "has space"})
    assert "$.enabled" in refusal(TenantCacheConfig, {"enabled": "yes"})


def test_store_defaults() -> None:
    config = msgspec.convert({}, CacheStoreConfig)
    assert (config.backend, config.max_bytes, config.max_entry_bytes, config.prefix) == ("memory", 256 * MIB, 4 * MIB, "sg:cache:")
    assert (config.compress_above_bytes, config.timeout_s, config.retry_after_s) == (1024, 0.1, 1.0)


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"backend": "memcached"}, "$.backend"),
        ({"max_bytes": 1000}, "$.max_bytes"),
        ({"prefix": "has space"}, "$.prefix"),
        ({"compress_above_bytes": -1}, "$.compress_above_bytes"),
        ({"timeout_s": 0}, "$.timeout_s"),
        ({"timeout_s": 30}, "$.timeout_s"),
        ({"retry_after_s": 0}, "$.retry_after_s"),
    ],
)
def test_store_refusals_name_the_key(raw: dict[str, Any], key: str) -> None:
    assert key in refusal(CacheStoreConfig, raw)


def test_memory_entries_must_fit_the_memory() -> None:
    message = refusal(CacheStoreConfig, {"max_bytes": 2 * MIB, "max_entry_bytes": 3 * MIB})
    assert "`max_entry_bytes`" in message and "`max_bytes`" in message
    # Redis keeps no max_bytes of its own.
    assert msgspec.convert({"backend": "redis", "max_bytes": 2 * MIB, "max_entry_bytes": 3 * MIB}, CacheStoreConfig).backend == "redis"
