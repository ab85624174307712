"""The counter-store contract across shards: counters shared by tenants, settles from other replicas, the cluster client, older records."""

from __future__ import annotations

import msgspec
import pytest

from budgets.store import (
    BudgetRule,
    LimitRule,
    Plan,
)
from budgets.store_redis import RedisCounterStore, shard_of
from core.config import Config
from router.state import open_counter_store
from tests.contract.counter_harness import LONG_LEASE, REDIS_URL, Harness, MemoryHarness, RedisHarness


def tenant_plan(tenant: str, model_slots: int, rpm: int = 100) -> Plan:
    """What accounting builds for a tenant, plus a concurrency limit shared by every tenant (one model)."""
    return Plan(
        limits=(
            LimitRule(f"rpm:t:{tenant}", "requests", limit=rpm),
            LimitRule(f"tpm:k:{tenant}:key1", "tokens", limit=10_000),
            LimitRule("conc:d:shared-model", "concurrency", limit=model_slots),
        ),
        budgets=(BudgetRule(f"budget:t:{tenant}:money:lifetime", "money", limit=1_000),),
    )


async def test_a_counter_shared_by_tenants_holds_across_them(harness: Harness) -> None:
    store = harness.store
    assert (await store.reserve(tenant_plan("acme", 2), "a", 10, 100, LONG_LEASE)).allowed
    assert (await store.reserve(tenant_plan("beta", 2), "b", 10, 100, LONG_LEASE)).allowed
    refused = await store.reserve(tenant_plan("gamma", 2), "c", 10, 100, LONG_LEASE)
    assert (refused.allowed, refused.reason, refused.key) == (False, "concurrency", "conc:d:shared-model")
    await store.settle("a", tokens=5, money=40)
    assert (await store.reserve(tenant_plan("gamma", 2), "c", 10, 100, LONG_LEASE)).allowed
    assert await store.budget_state("budget:t:acme:money:lifetime") == (40, 0)
    assert await store.budget_state("budget:t:gamma:money:lifetime") == (0, 100)


async def test_a_refusal_on_a_shared_counter_takes_nothing_from_the_tenant(harness: Harness) -> None:
    store = harness.store
    plan = tenant_plan("acme", 1, rpm=2)
    assert (await store.reserve(plan, "a", 6_000, 100, LONG_LEASE)).allowed
    refused = await store.reserve(plan, "b", 4_000, 100, LONG_LEASE)
    assert refused.reason == "concurrency"
    assert await store.budget_state("budget:t:acme:money:lifetime") == (0, 100)
    await store.settle("a", tokens=6_000, money=100)
    # b took no request, no tokens and no money: one request and 4000 tokens still fit
    got = await store.reserve(plan, "c", 4_000, 900, LONG_LEASE)
    assert got.allowed and got.remaining == (0,)
    await store.settle("c")
    assert (await store.reserve(plan, "d", 0, 0, LONG_LEASE)).reason == "requests"


async def test_a_reservation_settled_by_another_replica_is_released_and_charged(harness: Harness) -> None:
    if isinstance(harness, MemoryHarness):
        pytest.skip("one process: no other replica")
    other = harness.replica()
    try:
        plan = tenant_plan("acme", 1)
        assert (await harness.store.reserve(plan, "a", 10, 100, LONG_LEASE)).allowed
        await other.settle("a", tokens=10, money=70)
        await harness.store.settle("a", tokens=10, money=70)
        assert await harness.store.budget_state("budget:t:acme:money:lifetime") == (70, 0)
        assert (await harness.store.reserve(tenant_plan("beta", 1), "b", 10, 100, LONG_LEASE)).allowed
    finally:
        await other.close()


async def test_the_config_chooses_a_cluster_client_and_shards_by_tenant() -> None:
    document = {"state": {"counters": "redis", "redis_url": "redis://127.0.0.1:7000/0", "counters_cluster": True, "ledger": "off"}}
    store = open_counter_store(msgspec.convert(document, Config))
    assert isinstance(store, RedisCounterStore) and store.sharded
    await store.close()
    plain = open_counter_store(msgspec.convert({"state": {"counters": "redis", "redis_url": REDIS_URL, "ledger": "off"}}, Config))
    assert isinstance(plain, RedisCounterStore) and not plain.sharded
    await plain.close()
    with pytest.raises(msgspec.ValidationError, match="counters_cluster"):
        msgspec.convert({"state": {"counters_cluster": True}}, Config)
    assert (shard_of("budget:k:acme:key1:money:lifetime"), shard_of("rpm:t:acme")) == ("t:acme", "t:acme")
    assert (shard_of("conc:d:model-a"), shard_of("tenant:acme:money"), shard_of("big")) == ("d:model-a", None, None)


async def test_a_reservation_the_previous_version_made_settles(harness: Harness) -> None:
    if not isinstance(harness, RedisHarness) or harness.cluster:
        pytest.skip("the previous version's records exist only on a single Redis")
    p, client = harness.redis_store.key_prefix, harness.client
    record = {"c": ["key:conc"], "t": [], "b": [["tenant:money", -1, "m"]]}
    await client.set(p + "res:old", msgspec.json.encode(record))
    await client.zadd(p + "c:key:conc", {"old": 2**40})
    await client.hset(p + "bs:tenant:money", "reserved", 100)
    await client.hset(p + "ba:tenant:money", "old", 100)
    await client.zadd(p + "bl:tenant:money", {"old": 2**40})
    await harness.store.settle("old", money=70)
    assert await harness.store.budget_state("tenant:money") == (70, 0)
    assert (await client.zcard(p + "c:key:conc"), await client.hlen(p + "ba:tenant:money")) == (0, 0)
