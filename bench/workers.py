"""Throughput with one gateway worker and with two sharing the port (``server.workers``).

``python -m bench.workers [--target sluicegate-all] [--workers 1,2] [--duration 5] [--rounds 3] [--concurrency 64] [--worker-cpu F]``

Starts the fake upstream and one Sluicegate target of the overhead benchmark
per worker count (``--workers N`` of ``sluicegate serve``: N processes
accepting on one port), then, round after round, drives each with wrk for
non-streamed and streamed chat completions and prints the medians of req/s,
p50 and p99, and each count's req/s against one worker's. Nothing is pinned:
the workers, wrk and the fake upstream share the machine's CPUs, so on a
machine with few of them the second worker competes with the load generator
and the upstream, and the figure says what a small host gets, not how far
the design scales.

``--worker-cpu F`` holds each worker process to F of a core (a cgroup CPU
quota of its own, ``bench.cpu_quota``), as the Redis Cluster benchmark holds
its shards: with F small enough that the workers together leave room for wrk
and the upstream, the workers bound the rate, and the figure says whether a
second worker adds its share, as it would on a host with a core for each.
The table then also gives the workers' CPU time per request (all their
threads, from ``/proc``). A quota throttles a worker in slices of its
100 ms period, so under it the latencies say nothing about the gateway.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench import cpu_quota
from bench.overhead_targets import (
    CHAT_PATH,
    FEATURES,
    LABELS,
    bench_key_hash,
    request_body,
    request_headers,
    serve_argv,
    sluicegate_config,
)
from bench.processes import Server, child_pids, fake_upstream, free_port, process_cpu_seconds
from bench.wrk import run_wrk, wrk_ready


def _argv(config: Path, port: int, workers: int) -> list[str]:
    argv = serve_argv(config, port)
    argv[argv.index("--workers") + 1] = str(workers)
    return argv


def worker_pids(server: Server, workers: int) -> list[int]:
    """The processes that serve requests: the server itself with one worker, else its spawned worker children."""
    assert server.process is not None
    if workers == 1:
        return [server.process.pid]
    found = []
    for pid in child_pids(server.process.pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:  # not multiprocessing's resource tracker
            found.append(pid)
    if len(found) != workers:
        raise RuntimeError(f"expected {workers} worker processes, found {len(found)}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="sluicegate-all", choices=sorted(FEATURES))
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--worker-cpu", type=float, help="hold each worker process to this share of a core (cgroup quota)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    if not wrk_ready():
        return 2
    os.environ.setdefault("PYTHONHASHSEED", "0")
    # (req/s, p50 ms, p99 ms, the workers' CPU us a request) per round
    figures: dict[tuple[int, str], list[tuple[float, float, float, float]]] = {}
    groups: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="sluicegate-workers-") as tmp:
        work = Path(tmp)
        up_port = free_port()
        upstream = fake_upstream(work, up_port)
        servers: dict[int, tuple[Server, str, list[int]]] = {}
        try:
            upstream.start()
            upstream.wait_ready(f"http://127.0.0.1:{up_port}{CHAT_PATH}", request_body(False), request_headers("upstream"))
            for n in counts:
                port = free_port()
                config = work / f"workers-{n}.yaml"
                config.write_text(sluicegate_config(f"http://127.0.0.1:{up_port}/v1", bench_key_hash(), FEATURES[args.target]))
                server = Server(f"{n} worker(s)", _argv(config, port, n), work / f"workers-{n}.log", work)
                url = f"http://127.0.0.1:{port}{CHAT_PATH}"
                server.start()
                server.wait_ready(url, request_body(False), request_headers(args.target), timeout_s=60)
                pids = worker_pids(server, n)
                if args.worker_cpu:
                    groups += [cpu_quota.limit(pid, args.worker_cpu, f"sg-bench-worker-{pid}") for pid in pids]
                servers[n] = (server, url, pids)
            for number in range(args.rounds):
                shift = number % len(counts)
                for n in counts[shift:] + counts[:shift]:
                    server, url, pids = servers[n]
                    for stream in (False, True):
                        mode = "stream" if stream else "non-stream"
                        body, headers = request_body(stream), request_headers(args.target)
                        run_wrk(url, body, headers, duration_s=1, concurrency=args.concurrency)
                        before = sum(map(process_cpu_seconds, pids))
                        result = run_wrk(url, body, headers, duration_s=args.duration, concurrency=args.concurrency)
                        used = sum(map(process_cpu_seconds, pids)) - before
                        cpu_us = used * 1e6 / result.requests if result.requests else float("nan")
                        figures.setdefault((n, mode), []).append((result.rps, result.p50_ms, result.p99_ms, cpu_us))
                        print(f"  round {number + 1}: {n} worker(s) {mode:<10} {result.rps:9.1f} req/s", file=sys.stderr, flush=True)
        finally:
            for server, _, _ in servers.values():
                server.stop()
            upstream.stop()
            for group in groups:
                cpu_quota.release(group)
    held = f", each worker held to {args.worker_cpu:g} of a core" if args.worker_cpu else ""
    print(f"{LABELS[args.target]}, wrk -c{args.concurrency}, medians of {args.rounds} rounds{held}")
    print(f"{'workers':>7} {'mode':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs 1 worker':>12} {'req/s range':>19} {'CPU us':>8}")
    for mode in ("non-stream", "stream"):
        base = statistics.median(r[0] for r in figures[(counts[0], mode)])
        for n in counts:
            rows = figures[(n, mode)]
            rps = statistics.median(r[0] for r in rows)
            p50 = statistics.median(r[1] for r in rows)
            p99 = statistics.median(r[2] for r in rows)
            cpu_us = statistics.median(r[3] for r in rows)
            low, high = min(r[0] for r in rows), max(r[0] for r in rows)
            print(f"{n:>7} {mode:<10} {rps:9.1f} {p50:8.2f} {p99:8.2f} {100 * rps / base:11.1f}% {low:9.1f}-{high:9.1f} {cpu_us:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
