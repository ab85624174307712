"""Reserve + settle round trips per second for each counter store.

``python -m bench.store_bench [--duration 3] [--concurrency 1,32] [--redis-url URL] [--no-redis]``

Every round trip is what one gateway request costs the store: a reserve that
checks and reserves a requests window, a tokens window, a concurrency slot and
a hard budget, then the settle that corrects tokens and charges the budget.
For each store and each concurrency level, that many coroutines loop for
``--duration`` seconds; the script prints round trips per second and the mean
and p99 latency of one round trip. Redis keys go under a fresh prefix and are
deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable

import redis.asyncio as aioredis

from budgets.store import BudgetRule, CounterStore, LimitRule, Plan
from budgets.store_memory import MemoryCounterStore
from budgets.store_redis import RedisCounterStore

_PLAN = Plan(
    limits=(
        LimitRule("bench:key:rpm", "requests", limit=10**15),
        LimitRule("bench:key:tpm", "tokens", limit=10**15),
        LimitRule("bench:key:conc", "concurrency", limit=10**6),
    ),
    budgets=(BudgetRule("bench:tenant:money:month", "money", limit=10**18),),
)


async def _round_trip(store: CounterStore, request_id: str) -> None:
    admission = await store.reserve(_PLAN, request_id, 500, 2_000_000, lease_ms=60_000)
    if not admission.allowed:
        raise RuntimeError(f"benchmark request refused by {admission.reason}")
    await store.settle(request_id, 320, 1_250_000)


async def measure(store: CounterStore, duration_s: float, concurrency: int) -> tuple[float, float, float]:
    """(round trips per second, mean ms, p99 ms) of ``concurrency`` looping callers."""
    latencies: list[float] = []
    deadline = time.perf_counter() + duration_s

    async def caller(worker: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            await _round_trip(store, f"bench-{worker}-{n}")
            latencies.append(time.perf_counter() - began)
            n += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(worker) for worker in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return len(latencies) / elapsed, 1000 * sum(latencies) / len(latencies), 1000 * p99


async def _delete_prefix(url: str, prefix: str) -> None:
    client = aioredis.from_url(url)
    keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
    for start in range(0, len(keys), 1000):
        await client.delete(*keys[start : start + 1000])
    await client.aclose()


async def main(args: argparse.Namespace) -> None:
    factories: list[tuple[str, Callable[[], CounterStore]]] = [("memory", MemoryCounterStore)]
    prefix = f"sgbench-{uuid.uuid4().hex[:8]}:"
    if not args.no_redis:
        factories.append(("redis", lambda: RedisCounterStore(args.redis_url, prefix=prefix)))
    print(f"{'store':<8} {'conc':>5} {'round trips/s':>14} {'mean ms':>9} {'p99 ms':>9}")
    try:
        for name, factory in factories:
            store = factory()
            if not await store.ping():
                print(f"{name:<8} unreachable, skipped")
                await store.close()
                continue
            for concurrency in args.concurrency:
                await measure(store, min(0.3, args.duration), concurrency)  # warm-up
                rate, mean_ms, p99_ms = await measure(store, args.duration, concurrency)
                print(f"{name:<8} {concurrency:>5} {rate:>14,.0f} {mean_ms:>9.3f} {p99_ms:>9.3f}")
            await store.close()
    finally:
        if not args.no_redis:
            await _delete_prefix(args.redis_url, "{" + prefix + "}")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Reserve + settle round trips per second for each counter store.")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement (default 3)")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 32],
        help="comma-separated numbers of concurrent callers (default 1,32)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--no-redis", action="store_true", help="measure the in-process store only")
    return parser.parse_args()


def run() -> None:
    args = _parse()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args))
    else:
        uvloop.run(main(args))


if __name__ == "__main__":
    run()
