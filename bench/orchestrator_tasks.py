"""Orchestrator tasks per second: enqueue to acknowledged, no-op handler, local Redis and the SQLite store.

``python -m bench.orchestrator_tasks [--duration 3] [--producers 8] [--concurrency 1,32] [--steps 0]
[--redis-url URL] [--postgres-dsn DSN]``

For each worker concurrency, ``--producers`` coroutines create tasks (row
committed, then XADD) for ``--duration`` seconds while one worker runs them
with a handler that does nothing but ``--steps`` memoised steps; the clock
stops when the last task created has been acknowledged (at most
``--drain`` seconds more). It prints tasks created and completed per second
and the mean and p99 time from a task's creation to its run starting. The
store is a fresh SQLite file (and, with ``--postgres-dsn``, that database
too); Redis keys go under a fresh prefix and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis
from sluicegate_orchestrator import Hooks, Json, Orchestrator, PostgresTaskStore, SqliteTaskStore, StepContext, TaskStore, Worker


async def _noop(_key: str) -> Json:
    return None


async def measure(store: TaskStore, redis: aioredis.Redis, args: argparse.Namespace, concurrency: int) -> tuple[float, float, float, float]:
    """(created per second, completed per second, mean ms, p99 ms to start) for one worker concurrency."""
    prefix = f"sgbench-orch-{uuid.uuid4().hex[:8]}"
    orchestrator = Orchestrator(store, redis, prefix=prefix)
    waits: list[float] = []
    done = 0

    async def handler(ctx: StepContext) -> Json:
        waits.append(time.time() - ctx.task.created_at)
        for n in range(args.steps):
            await ctx.step(f"s{n}", _noop)
        return None

    def finished(_kind: str, status: str, _seconds: float) -> None:
        nonlocal done
        done += status == "succeeded"

    worker = Worker(orchestrator, {"noop": handler}, concurrency=concurrency, block_ms=100, hooks=Hooks(finished=finished))
    await orchestrator.queue().ensure_group()
    worker.start()
    created = 0
    started = time.perf_counter()
    deadline = started + args.duration

    async def producer() -> None:
        nonlocal created
        while time.perf_counter() < deadline:
            await orchestrator.create("bench", "noop", {"n": created})
            created += 1

    try:
        await asyncio.gather(*(producer() for _ in range(args.producers)))
        produced_s = time.perf_counter() - started
        drain_until = time.perf_counter() + args.drain
        while done < created and time.perf_counter() < drain_until:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
    finally:
        await worker.stop(grace_s=1)
        keys = [key async for key in redis.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await redis.delete(*keys)
    waits.sort()
    p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))] if waits else 0.0
    mean = sum(waits) / len(waits) if waits else 0.0
    return created / produced_s, done / elapsed, 1000 * mean, 1000 * p99


async def main(args: argparse.Namespace) -> None:
    redis = aioredis.from_url(args.redis_url)
    with tempfile.TemporaryDirectory(prefix="sgbench-orch-") as tmp:
        stores: list[tuple[str, TaskStore]] = [("sqlite", SqliteTaskStore(str(Path(tmp) / "tasks.sqlite")))]
        if args.postgres_dsn:
            stores.append(("postgres", PostgresTaskStore(args.postgres_dsn, pool_size=16)))
        print(f"{'store':<9} {'conc':>5} {'created/s':>10} {'completed/s':>12} {'start mean ms':>14} {'start p99 ms':>13}")
        try:
            for name, store in stores:
                for concurrency in args.concurrency:
                    created, completed, mean_ms, p99_ms = await measure(store, redis, args, concurrency)
                    print(f"{name:<9} {concurrency:>5} {created:>10,.0f} {completed:>12,.0f} {mean_ms:>14.1f} {p99_ms:>13.1f}")
        finally:
            for _name, store in stores:
                await store.close()
            await redis.aclose()


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Orchestrator tasks per second, enqueue to acknowledged.")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of task creation per measurement (default 3)")
    parser.add_argument("--drain", type=float, default=30.0, help="at most this many seconds more to finish (default 30)")
    parser.add_argument("--producers", type=int, default=8, help="concurrent creators (default 8)")
    parser.add_argument("--steps", type=int, default=0, help="memoised no-op steps per task (default 0)")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 32],
        help="comma-separated worker concurrencies (default 1,32)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres-dsn", default="", help="also measure the PostgreSQL store on this (scratch) database")
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
