"""Admitted requests per second and Redis work per request: one Redis, then Redis Clusters of growing size.

``python -m bench.redis_counters [--shards 1,2,3] [--duration 10] [--tenants 64] [--processes 2] [--concurrency 32]``

For a fresh standalone redis-server and for a local Redis Cluster of each size
in ``--shards`` (``tests.redis_cluster``: one redis-server per shard on this
machine), ``--processes`` client processes each run ``--concurrency``
coroutines that loop over what the gateway does per request: reserve a
tenant's plan (requests and tokens per minute and concurrency for the tenant,
requests per minute for its key, a monthly money budget) and settle it, with
tenants picked at random among ``--tenants``. Printed per setup: admitted
requests per second, Redis commands per request (INFO commandstats, script
calls and the commands they run), script time per request (the scripts'
``usec``) and Redis CPU per request (``used_cpu_sys`` + ``used_cpu_user``),
summed over the shards, and the busiest shard's share of the commands (how
evenly tenants spread: a cluster's ceiling is a shard's ceiling divided by
that share). Client processes and servers share this machine's
cores, so the figures say where the ceiling is only once the clients are not it.

``--shard-cpu F`` holds every redis-server to F of a core (a cgroup CPU quota,
``bench.cpu_quota``): the shards then bound the admitted rate, as one Redis
does for a fleet of replicas, and the rate shows how it grows with the shards.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import time
import uuid
from dataclasses import dataclass
from multiprocessing.synchronize import Event

import redis

from bench import cpu_quota
from budgets.store import BudgetRule, LimitRule, Plan
from budgets.store_redis import RedisCounterStore
from tests.redis_cluster import LocalRedisCluster

_SCRIPTS = ("evalsha", "eval")
# Commands the benchmark itself sends (stats, topology), not counted as request work.
_OVERHEAD = ("config", "info", "cluster", "ping", "script", "command", "hello", "client")


def tenant_plan(tenant: str, period_end_ms: int) -> Plan:
    """The plan budgets.accounting builds for a key of ``tenant`` with limits and a monthly budget."""
    return Plan(
        limits=(
            LimitRule(f"rpm:t:{tenant}", "requests", limit=10**12),
            LimitRule(f"tpm:t:{tenant}", "tokens", limit=10**15),
            LimitRule(f"conc:t:{tenant}", "concurrency", limit=10**6),
            LimitRule(f"rpm:k:{tenant}:key-1", "requests", limit=10**12),
        ),
        budgets=(BudgetRule(f"budget:t:{tenant}:money:month:2026-12", "money", limit=10**18, period_end_ms=period_end_ms),),
    )


async def _drive(url: str, cluster: bool, tenants: int, concurrency: int, ready: Event, go: Event, duration_s: float) -> int:
    store = RedisCounterStore(url, prefix="bench:", cluster=cluster, socket_timeout_s=5, max_connections=concurrency * 2)
    end_ms = int(time.time() * 1000) + 30 * 24 * 3600 * 1000
    plans = [tenant_plan(f"tenant-{n}", end_ms) for n in range(tenants)]
    tag = uuid.uuid4().hex[:8]
    await store.reserve(plans[0], f"warm-{tag}", 1, 1, 60_000)
    await store.settle(f"warm-{tag}")
    ready.set()
    while not go.is_set():
        await asyncio.sleep(0.005)
    deadline = time.perf_counter() + duration_s
    admitted = 0

    async def worker(w: int) -> None:
        nonlocal admitted
        n = 0
        while time.perf_counter() < deadline:
            request_id = f"{tag}-{w}-{n}"
            if (await store.reserve(random.choice(plans), request_id, 500, 2_000_000, 60_000)).allowed:
                admitted += 1
            await store.settle(request_id, 320, 1_250_000)
            n += 1

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    await store.close()
    return admitted


def _client(
    url: str, cluster: bool, tenants: int, concurrency: int, ready: Event, go: Event, duration_s: float, out: mp.Queue[int]
) -> None:
    out.put(asyncio.run(_drive(url, cluster, tenants, concurrency, ready, go, duration_s)))


@dataclass(slots=True)
class Sample:
    calls: int = 0
    script_usec: int = 0
    cpu_s: float = 0.0
    # Commands of the busiest server.
    most_calls: int = 0


def _sample(ports: list[int], reset: bool) -> Sample:
    """Commands, script time and CPU summed over the servers (resetting command stats first if asked)."""
    total = Sample()
    for port in ports:
        client = redis.Redis(port=port)
        if reset:
            client.config_resetstat()
        cpu = client.info("cpu")
        total.cpu_s += float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
        calls = 0
        for name, stat in client.info("commandstats").items():
            command = name.removeprefix("cmdstat_").split("|")[0]
            if command in _OVERHEAD:
                continue
            calls += int(stat["calls"])
            if command in _SCRIPTS:
                total.script_usec += int(stat["usec"])
        total.calls += calls
        total.most_calls = max(total.most_calls, calls)
        client.close()
    return total


def run_setup(label: str, servers: LocalRedisCluster, args: argparse.Namespace) -> str:
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    readies = [ctx.Event() for _ in range(args.processes)]
    out: mp.Queue[int] = ctx.Queue()
    cluster = not servers.standalone
    procs = [
        ctx.Process(target=_client, args=(servers.url, cluster, args.tenants, args.concurrency, ready, go, args.duration, out))
        for ready in readies
    ]
    for proc in procs:
        proc.start()
    for ready in readies:
        ready.wait(60)
    before = _sample(servers.ports, reset=True)
    go.set()
    admitted = sum(out.get(timeout=args.duration + 120) for _ in procs)
    after = _sample(servers.ports, reset=False)
    for proc in procs:
        proc.join()
    per = max(admitted, 1)
    # Settles of requests in flight at the deadline also count: they are small next to the total.
    return (
        f"{label:<18} {admitted / args.duration:>12,.0f} {after.calls / per:>11.1f}"
        f" {after.script_usec / per:>13.1f} {(after.cpu_s - before.cpu_s) * 1e6 / per:>13.1f}"
        f" {100 * after.most_calls / max(after.calls, 1):>12.0f}%"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="1,2,3", help="cluster sizes, comma separated")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per setup")
    parser.add_argument("--tenants", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=32, help="coroutines per client process")
    parser.add_argument("--no-standalone", action="store_true", help="skip the single Redis")
    parser.add_argument("--shard-cpu", type=float, help="hold each redis-server to this share of a core (cgroup quota)")
    args = parser.parse_args()
    setups: list[tuple[str, LocalRedisCluster]] = []
    if not args.no_standalone:
        setups.append(("single redis", LocalRedisCluster(1, standalone=True)))
    setups += [(f"cluster {n} shard{'s' if n > 1 else ''}", LocalRedisCluster(n)) for n in map(int, args.shards.split(","))]
    print(f"{args.processes} client processes x {args.concurrency} coroutines, {args.tenants} tenants, {args.duration:g} s each")
    print(f"{'setup':<18} {'admitted/s':>12} {'cmds/req':>11} {'script us/req':>13} {'redis CPU us':>13} {'busiest shard':>13}")
    if args.shard_cpu:
        print(f"each redis-server held to {args.shard_cpu:g} of a core (cgroup CPU quota)")
    for label, servers in setups:
        with servers:
            groups = [cpu_quota.limit(pid, args.shard_cpu, f"sg-bench-redis-{pid}") for pid in servers.pids] if args.shard_cpu else []
            try:
                print(run_setup(label, servers, args), flush=True)
            finally:
                servers.stop()
                for group in groups:
                    cpu_quota.release(group)


if __name__ == "__main__":
    main()
