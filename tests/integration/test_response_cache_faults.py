"""The response cache in-process: faults of the store are misses, a corrupt entry is dropped, a changed deployment misses.

The end-to-end behaviour (hits, misses, bypasses, ledger, billing, streams,
Redis) is ``tests/e2e/test_response_cache.py``; here the store is swapped for
ones that fail, and the checks of the config that names a cache.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from bench.fake_upstream import FakeUpstream
from core.config import Config, DeploymentConfig, Price
from core.config_check import cross_check
from policies.routing import Deployment
from policies.tenant_policy import TenantPolicies
from router.cache_step import directives
from router.cache_store import CacheEntry
from router.cache_store_memory import MemoryCacheStore
from router.gateway import Gateway
from tests.conftest import TEST_KEY, make_config
from tests.integration.gateway_server import running_gateway

AUTH = {"authorization": f"Bearer {TEST_KEY}"}


def _config(url: str, **overrides: Any) -> Config:
    deployments = [{"name": "d", "provider": "openai", "base_url": url, "model": "fake-model"}]
    models = [{"alias": "m", "deployments": ["d"], "cache": {}}]
    return make_config(url, deployments=deployments, models=models, **overrides)


class FailingStore:
    """A store whose every call raises: what a broken implementation would do."""

    async def get(self, key: str) -> CacheEntry | None:
        raise ConnectionError("down")

    async def put(self, key: str, entry: CacheEntry, ttl_s: float) -> bool:
        raise ConnectionError("down")

    async def delete(self, key: str) -> None:
        raise ConnectionError("down")

    async def close(self) -> None:
        return None


class CorruptingStore(MemoryCacheStore):
    """Keeps its first entry damaged (its decoder must refuse it), and refuses any later one."""

    damaged = False

    async def put(self, key: str, entry: CacheEntry, ttl_s: float) -> bool:
        if self.damaged:
            return False
        stored = await super().put(key, entry, ttl_s)
        value, expires = self._entries[key]
        self._entries[key] = (b"\x01\x00garbage" + value[8:], expires)
        self.damaged = True
        return stored


@pytest.fixture
async def served(fake_upstream: FakeUpstream) -> AsyncIterator[tuple[str, Gateway, aiohttp.ClientSession]]:
    async with running_gateway(_config(fake_upstream.url)) as (base, gateway), aiohttp.ClientSession() as http:
        yield base, gateway, http


async def _ask(base: str, http: aiohttp.ClientSession, text: str, stream: bool = False) -> tuple[int, str, bytes]:
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "temperature": 0, "stream": stream}
    async with http.post(f"{base}/v1/chat/completions", json=body, headers=AUTH) as r:
        return r.status, r.headers.get("x-sluicegate-cache", ""), await r.read()


async def _settled(gateway: Gateway) -> None:
    await gateway.billing.drain()
    writes = list(gateway.response_cache._writes)
    for task in writes:
        await task


async def test_a_store_that_raises_is_a_miss_never_an_error(served: tuple[str, Gateway, aiohttp.ClientSession]) -> None:
    base, gateway, http = served
    gateway.response_cache.store = FailingStore()
    for stream in (False, True, False):
        status, result, _ = await _ask(base, http, "failing store", stream)
        await _settled(gateway)
        assert (status, result) == (200, "miss")


async def test_a_corrupt_entry_is_dropped_and_never_served(served: tuple[str, Gateway, aiohttp.ClientSession]) -> None:
    base, gateway, http = served
    store = gateway.response_cache.store = CorruptingStore()
    assert (await _ask(base, http, "corrupt"))[:2] == (200, "miss")
    await _settled(gateway)
    [key] = list(store._entries)
    status, result, body = await _ask(base, http, "corrupt")
    assert (status, result) == (200, "miss") and msgspec.json.decode(body)["choices"]
    assert key not in store._entries  # dropped when read: the next store of it is corrupted again, so hand it none


async def test_an_entry_is_served_only_by_its_deployments_version(served: tuple[str, Gateway, aiohttp.ClientSession]) -> None:
    base, gateway, http = served
    assert (await _ask(base, http, "versioned"))[1] == "miss"
    await _settled(gateway)
    assert (await _ask(base, http, "versioned"))[1] == "hit"
    deployment = gateway.snapshot.deployments["d"]
    deployment.version = "another-config"  # what a changed deployment config gives its Deployment
    assert (await _ask(base, http, "versioned"))[1] == "miss"


def test_a_deployments_version_follows_its_config() -> None:
    config = DeploymentConfig(name="d", provider="openai", model="x")
    engine: Any = object()
    same = Deployment(config=config, engine=engine).version
    assert same == Deployment(config=DeploymentConfig(name="d", provider="openai", model="x"), engine=engine).version
    repriced = msgspec.structs.replace(config, price=Price(input_per_mtok=1))
    assert Deployment(config=repriced, engine=engine).version != same


def test_cache_control_directives() -> None:
    assert directives(None) == frozenset()
    assert directives({"cache-control": "No-Cache, max-age=0"}) == {"no-cache", "max-age"}
    assert directives({"cache-control": "no-store"}) == {"no-store"}


def test_the_config_checks_what_a_cache_needs() -> None:
    url = "http://127.0.0.1:9/v1"
    redis_backend = _config(url, state={"cache": {"backend": "redis"}})
    assert any("state.cache.backend" in p for p in cross_check(redis_backend))
    assert not cross_check(_config(url, state={"cache": {"backend": "redis"}, "redis_url": "redis://127.0.0.1:1/0"}))
    priced = make_config(url, deployments=[{"name": "d", "provider": "openai", "base_url": url, "model": "x"}],
                         models=[{"alias": "m", "deployments": ["d"], "cache_price": {"input_per_mtok": 1}}])  # fmt: skip
    assert any("models[0].cache_price" in p for p in cross_check(priced))
    with pytest.raises(msgspec.ValidationError):
        make_config(url, models=[{"alias": "m", "deployments": ["d"], "cache": {"mode": "semantic"}}])


def test_a_tenants_part_in_the_cache() -> None:
    config = make_config(
        "http://127.0.0.1:9/v1",
        tenants=[{"id": "out", "cache": {"enabled": False}}, {"id": "shared", "cache": {"scope": "team"}}, {"id": "plain"}],
    )
    policies = TenantPolicies(config)
    assert policies.cache("plain") is None
    out, shared = policies.cache("out"), policies.cache("shared")
    assert out is not None and not out.enabled
    assert shared is not None and shared.scope == "team"
