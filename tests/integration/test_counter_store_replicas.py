"""Replicas as separate OS processes sharing one real Redis: limits hold across them.

Each replica is a fresh Python process running a small script that builds its
own ``RedisCounterStore``, reports ready, waits for a common "go" on stdin,
then fires its admits concurrently. A replica can also die without settling, to show its
reservations come back once their lease has expired.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from budgets.store import BudgetRule, LimitRule, Plan
from budgets.store_redis import RedisCounterStore

REDIS_URL = os.environ.get("SLUICEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[2]
HOUR_MS = 3_600_000

REPLICA = r"""
import asyncio, json, os, sys, time
from budgets.store import BudgetRule, LimitRule, Plan
from budgets.store_redis import RedisCounterStore

async def main(cfg):
    store = RedisCounterStore(cfg["url"], prefix=cfg["prefix"], socket_timeout_s=5, pool_timeout_s=10)
    plan = Plan(
        limits=tuple(LimitRule(**item) for item in cfg["limits"]),
        budgets=tuple(BudgetRule(**item) for item in cfg["budgets"]),
    )
    names = [f"{cfg['name']}-{n}" for n in range(cfg["n"])]
    assert await store.ping()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    began = time.time()
    decisions = await asyncio.gather(*(store.reserve(plan, name, 0, cfg["money"], cfg["lease_ms"]) for name in names))
    span = [began, time.time()]
    reasons = sorted({d.reason for d in decisions if d.reason})
    print(json.dumps({"allowed": sum(d.allowed for d in decisions), "reasons": reasons, "span": span}), flush=True)
    if cfg["crash"]:
        os._exit(0)  # no settle, no close: a replica that died mid-flight
    await store.close()

asyncio.run(main(json.loads(sys.argv[1])))
"""


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    probe = RedisCounterStore(REDIS_URL, prefix="sgtest-probe:")
    reachable = await probe.ping()
    await probe.close()
    if not reachable:
        pytest.skip(f"no Redis at {REDIS_URL}")
    name = f"sgtest-replicas-{uuid.uuid4().hex[:12]}:"
    yield name
    client = aioredis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match="{" + name + "}*", count=500)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def clear_of_window_edge() -> None:
    """Wait out the last seconds of an hour window, so one run stays inside one window."""
    into = int(time.time() * 1000) % HOUR_MS
    if into > HOUR_MS - 30_000:
        await asyncio.sleep((HOUR_MS - into + 100) / 1000)


async def run_replicas(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            REPLICA,
            json.dumps(cfg),
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for cfg in configs
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stderr is not None
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            if line != b"ready\n":
                pytest.fail("replica did not start: " + (await proc.stderr.read()).decode()[-2000:])
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        results = []
        for proc in procs:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
            assert proc.returncode == 0, err.decode()[-2000:]
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return results


# What each request of a replica reserves on the money budget.
MONEY = 10_000


def replica(prefix: str, name: str, n: int, plan: Plan, **extra: Any) -> dict[str, Any]:
    return {
        "url": REDIS_URL,
        "prefix": prefix,
        "name": name,
        "n": n,
        "lease_ms": 30_000,
        "crash": False,
        "money": MONEY,
        "limits": [{"key": lim.key, "kind": lim.kind, "limit": lim.limit, "window_ms": lim.window_ms} for lim in plan.limits],
        "budgets": [{"key": b.key, "unit": b.unit, "limit": b.limit} for b in plan.budgets],
        **extra,
    }


@pytest.mark.parametrize(
    ("rpm", "budget_limit", "expected", "reason"),
    [(100, 10**12, 100, "requests"), (10**6, 1_370_000, 137, "budget")],
    ids=["rpm-binds", "budget-binds"],
)
async def test_two_replicas_never_admit_past_a_shared_limit(
    prefix: str, rpm: int, budget_limit: int, expected: int, reason: str
) -> None:
    plan = Plan(
        limits=(LimitRule("key:shared:rpm", "requests", limit=rpm, window_ms=HOUR_MS),),
        budgets=(BudgetRule("tenant:shared:money", "money", limit=budget_limit),),
    )
    await clear_of_window_edge()
    results = await run_replicas([replica(prefix, name, 250, plan) for name in ("replica-a", "replica-b")])
    assert sum(result["allowed"] for result in results) == expected
    first, second = (result["span"] for result in results)
    assert first[0] <= second[1] and second[0] <= first[1]  # the two bursts overlapped
    assert {r for result in results for r in result["reasons"]} == {reason}
    store = RedisCounterStore(REDIS_URL, prefix=prefix)
    assert await store.budget_state("tenant:shared:money") == (0, expected * MONEY)
    await store.close()


async def test_a_dead_replicas_reservations_return_after_the_lease(prefix: str) -> None:
    plan = Plan(
        limits=(LimitRule("key:shared:conc", "concurrency", limit=20),),
        budgets=(BudgetRule("tenant:shared:money", "money", limit=200_000),),
    )
    dead = await run_replicas([replica(prefix, "dead", 20, plan, lease_ms=1500, crash=True)])
    assert dead[0]["allowed"] == 20
    store = RedisCounterStore(REDIS_URL, prefix=prefix)
    assert await store.budget_state("tenant:shared:money") == (0, 200_000)
    held = await store.reserve(plan, "probe", 0, MONEY, lease_ms=30_000)
    assert held.reason == "concurrency"
    await asyncio.sleep(1.6)
    survivor = await run_replicas([replica(prefix, "survivor", 20, plan)])
    assert survivor[0]["allowed"] == 20
    assert await store.budget_state("tenant:shared:money") == (0, 200_000)
    await store.close()
