"""Throughput with one gateway worker and with two sharing the port (``server.workers``).

``python -m bench.workers [--target sluicegate-all] [--workers 1,2] [--duration 5] [--rounds 3] [--concurrency 64]``

Starts the fake upstream and one Sluicegate target of the overhead benchmark
per worker count (``--workers N`` of ``sluicegate serve``: N processes
accepting on one port), then, round after round, drives each with wrk for
non-streamed and streamed chat completions and prints the medians of req/s,
p50 and p99, and each count's req/s against one worker's. Nothing is pinned:
the workers, wrk and the fake upstream share the machine's CPUs, so on a
machine with few of them the second worker competes with the load generator
and the upstream, and the figure says what a small host gets, not how far
the design scales.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

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
from bench.processes import Server, fake_upstream, free_port
from bench.wrk import run_wrk, wrk_ready


def _argv(config: Path, port: int, workers: int) -> list[str]:
    argv = serve_argv(config, port)
    argv[argv.index("--workers") + 1] = str(workers)
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="sluicegate-all", choices=sorted(FEATURES))
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    if not wrk_ready():
        return 2
    os.environ.setdefault("PYTHONHASHSEED", "0")
    figures: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="sluicegate-workers-") as tmp:
        work = Path(tmp)
        up_port = free_port()
        upstream = fake_upstream(work, up_port)
        servers: dict[int, tuple[Server, str]] = {}
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
                servers[n] = (server, url)
            for number in range(args.rounds):
                shift = number % len(counts)
                for n in counts[shift:] + counts[:shift]:
                    server, url = servers[n]
                    for stream in (False, True):
                        mode = "stream" if stream else "non-stream"
                        body, headers = request_body(stream), request_headers(args.target)
                        run_wrk(url, body, headers, duration_s=1, concurrency=args.concurrency)
                        result = run_wrk(url, body, headers, duration_s=args.duration, concurrency=args.concurrency)
                        figures.setdefault((n, mode), []).append((result.rps, result.p50_ms, result.p99_ms))
                        print(f"  round {number + 1}: {n} worker(s) {mode:<10} {result.rps:9.1f} req/s", file=sys.stderr, flush=True)
        finally:
            for server, _ in servers.values():
                server.stop()
            upstream.stop()
    print(f"{LABELS[args.target]}, wrk -c{args.concurrency}, medians of {args.rounds} rounds")
    print(f"{'workers':>7} {'mode':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs 1 worker':>12} {'req/s range':>19}")
    for mode in ("non-stream", "stream"):
        base = statistics.median(r[0] for r in figures[(counts[0], mode)])
        for n in counts:
            rows = figures[(n, mode)]
            rps = statistics.median(r[0] for r in rows)
            p50 = statistics.median(r[1] for r in rows)
            p99 = statistics.median(r[2] for r in rows)
            low, high = min(r[0] for r in rows), max(r[0] for r in rows)
            print(f"{n:>7} {mode:<10} {rps:9.1f} {p50:8.2f} {p99:8.2f} {100 * rps / base:11.1f}% {low:9.1f}-{high:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
