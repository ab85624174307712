"""Fairness under a flood: does one tenant's burst raise another tenant's latency?

``python -m bench.fairness [--duration 10] [--capacity 4] [--service-ms 50] [--flood 64] [--steady-rps 20]``

Starts the fake upstream and Sluicegate (one worker) with an alias whose queue
admits ``--capacity`` requests at once; each takes ``--service-ms`` upstream,
so capacity is ``capacity / service`` requests per second. Tenant B sends a
steady ``--steady-rps`` (a small share). Phase 1 measures B alone; phase 2
repeats it while tenant A keeps ``--flood`` requests outstanding at all times —
far beyond its fair share. Prints B's p50/p99 in both phases and their ratio
(the target is p99 with the flood within 2x of p99 alone), and A's throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgspec

from bench.processes import Server, free_port
from router.auth import hash_api_key

KEYS = {"tenant-a": "sk-fair-a-0123456789", "tenant-b": "sk-fair-b-0123456789"}
BODY = msgspec.json.encode({"model": "fair", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4})


def _config(upstream_port: int, port: int, capacity: int, service_ms: int) -> bytes:
    return msgspec.yaml.encode(
        {
            "server": {"port": port, "log_level": "warning"},
            "deployments": [
                {
                    "name": "slow-fake", "provider": "openai", "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                    "model": "fake-slow", "options": {"extra_headers": {"x-fake-delay-ms": str(service_ms)}},
                }
            ],
            "models": [{"alias": "fair", "deployments": ["slow-fake"], "max_concurrent": capacity, "queue_timeout_s": 60}],
            "tenants": [{"id": t, "keys": [{"id": f"{t}-key", "hash": hash_api_key(k)}]} for t, k in KEYS.items()],
        }
    )


async def _one(http: aiohttp.ClientSession, url: str, key: str) -> float:
    started = time.perf_counter()
    async with http.post(url, data=BODY, headers={"authorization": f"Bearer {key}", "content-type": "application/json"}) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"status {r.status}")
    return time.perf_counter() - started


async def _steady(http: aiohttp.ClientSession, url: str, rps: float, duration: float) -> list[float]:
    latencies: list[float] = []
    tasks = []
    start = time.perf_counter()
    i = 0
    while (now := time.perf_counter()) - start < duration:
        target = start + i / rps
        if target > now:
            await asyncio.sleep(target - now)
        tasks.append(asyncio.create_task(_one(http, url, KEYS["tenant-b"])))
        i += 1
    for task in tasks:
        latencies.append(await task)
    return latencies


async def _flood(http: aiohttp.ClientSession, url: str, width: int, stop: asyncio.Event) -> int:
    done = 0

    async def worker() -> None:
        nonlocal done
        while not stop.is_set():
            await _one(http, url, KEYS["tenant-a"])
            done += 1

    await asyncio.gather(*(worker() for _ in range(width)))
    return done


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


async def _measure(url: str, args: argparse.Namespace) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        await _steady(http, url, args.steady_rps, 1.0)  # warm-up
        alone = await _steady(http, url, args.steady_rps, args.duration)
        stop = asyncio.Event()
        flood = asyncio.create_task(_flood(http, url, args.flood, stop))
        await asyncio.sleep(1.0)
        started = time.perf_counter()
        loaded = await _steady(http, url, args.steady_rps, args.duration)
        elapsed = time.perf_counter() - started
        stop.set()
        a_done = await flood
    return {
        "b_alone_p50_ms": statistics.median(alone) * 1000, "b_alone_p99_ms": _pct(alone, 0.99),
        "b_flood_p50_ms": statistics.median(loaded) * 1000, "b_flood_p99_ms": _pct(loaded, 0.99),
        "a_rps": a_done / (elapsed + 1.0), "b_requests": float(len(loaded)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--capacity", type=int, default=4)
    parser.add_argument("--service-ms", type=int, default=50)
    parser.add_argument("--flood", type=int, default=64)
    parser.add_argument("--steady-rps", type=float, default=20.0)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sluicegate-fairness-"))
    up_port, port = free_port(), free_port()
    (work / "config.yaml").write_bytes(_config(up_port, port, args.capacity, args.service_ms))
    fake = Server("fake", [sys.executable, "-m", "bench.fake_upstream", "--port", str(up_port)], work / "fake.log", work)
    gate = Server("sluicegate", [sys.executable, "-m", "router", "serve", "--config", "config.yaml"], work / "gw.log", work)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        fake.start()
        gate.start()
        gate.wait_ready(url, BODY, {"authorization": f"Bearer {KEYS['tenant-b']}", "content-type": "application/json"})
        figures = asyncio.run(_measure(url, args))
    finally:
        gate.stop()
        fake.stop()
    capacity_rps = args.capacity * 1000 / args.service_ms
    print(f"capacity {capacity_rps:.0f} req/s; B steady {args.steady_rps:.0f} req/s; A keeps {args.flood} requests outstanding")
    print(f"{'':24}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'B alone':24}{figures['b_alone_p50_ms']:>10.1f}{figures['b_alone_p99_ms']:>10.1f}")
    print(f"{'B while A floods':24}{figures['b_flood_p50_ms']:>10.1f}{figures['b_flood_p99_ms']:>10.1f}")
    ratio = figures["b_flood_p99_ms"] / figures["b_alone_p99_ms"]
    print(f"B p99 ratio (flood / alone): {ratio:.2f}x (target <= 2x); A served {figures['a_rps']:.0f} req/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
