"""The response cache's hit path beside its miss path and the upstream served directly.

``python -m bench.cache_hits [--duration 10] [--concurrency 16] [--stream] [--upstream-delay-ms 0]``

One gateway (one worker, the in-process cache store, ledger off) in front of
the fake upstream, with three aliases of the same deployment: ``cached`` (an
exact cache that takes every request), ``semantic`` (a semantic cache whose
embeddings come from the fake's ``words`` model on the same upstream) and
``uncached``. The same request body every time, so after one warm-up request
every ``cached`` request is a hit. The ``semantic`` target sends a rewording
of the conversation its warm-up stored: each request is an exact miss, an
embedding call, a nearest-neighbour search and a replay.
Each target is driven by wrk for ``--duration`` seconds; printed: req/s, p50
and p99 latency, and the gateway's CPU time per request (all its threads,
from ``/proc``). With two CPUs or more the gateway has one to itself and wrk
and the upstream share another, as in ``bench.overhead``: then the CPU per
request is what a hit saves, apart from what the upstream costs the machine.
``--upstream-delay-ms`` makes the upstream wait before answering, as a real
model would (the fake's ``slow`` behaviour): a hit never waits for it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.overhead_targets import BENCH_KEY, bench_key_hash, serve_argv
from bench.processes import Server, fake_upstream, free_port, placement
from bench.wrk import WrkResult, run_wrk, wrk_ready

_MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]
_REWORDED = [{"role": "user", "content": "say hello to the benchmark, please"}]


def _config(upstream_url: str, key_hash: str, delay_ms: int) -> str:
    q = json.dumps
    headers = {"x-fake-behavior": "slow", "x-fake-delay-ms": str(delay_ms)} if delay_ms else {}
    return "\n".join(
        [
            "server: {log_level: warning}",
            'state: {ledger: "off", cache: {backend: memory}}',
            "deployments:",
            "  - name: fake",
            "    provider: openai",
            f"    base_url: {q(upstream_url)}",
            "    model: fake-model",
            f"    options: {{extra_headers: {q(headers)}}}",
            "  - name: embed",
            "    provider: openai",
            f"    base_url: {q(upstream_url)}",
            "    model: fake-words",
            "models:",
            "  - alias: cached",
            "    deployments: [fake]",
            "    cache: {mode: exact, ttl_s: 3600, qualify: always}",
            "  - alias: semantic",
            "    deployments: [fake]",
            "    cache: {mode: semantic, embedding: [embed], threshold: 0.9, ttl_s: 3600, qualify: always}",
            "  - alias: uncached",
            "    deployments: [fake]",
            "tenants:",
            "  - id: bench",
            "    keys:",
            "      - id: bench-key",
            f"        hash: {q(key_hash)}",
            "",
        ]
    )


def _body(model: str, stream: bool, messages: list[dict[str, str]] = _MESSAGES) -> bytes:
    body: dict[str, object] = {"model": model, "messages": messages, "temperature": 0}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(body, separators=(",", ":")).encode()


def _cache_result(url: str, body: bytes, headers: dict[str, str]) -> str:
    """What the gateway's cache did for one request (``x-sluicegate-cache``)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
        return str(response.headers.get("x-sluicegate-cache"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_hits", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per target")
    parser.add_argument("--concurrency", type=int, default=16, help="open connections")
    parser.add_argument("--stream", action="store_true", help="streamed chat completions (20 chunks)")
    parser.add_argument("--upstream-delay-ms", type=int, default=0, help="the upstream's wait before answering")
    args = parser.parse_args(argv)
    if not wrk_ready():
        return 2
    results: dict[str, WrkResult] = {}
    cpu_us: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="sluicegate-cache-") as tmp:
        work = Path(tmp)
        upstream_port, port = free_port(), free_port()
        upstream = fake_upstream(work, upstream_port)
        config = work / "gateway.yaml"
        upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
        config.write_text(_config(upstream_url, bench_key_hash(), args.upstream_delay_ms))
        gateway = Server("gateway", serve_argv(config, port), work / "gateway.log", work)
        upstream.start()
        gateway.start()
        try:
            direct_headers = {"Content-Type": "application/json"}
            if args.upstream_delay_ms:
                direct_headers |= {"x-fake-behavior": "slow", "x-fake-delay-ms": str(args.upstream_delay_ms)}
            gateway_headers = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}
            direct_url = f"{upstream_url}/chat/completions"
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            upstream.wait_ready(direct_url, _body("fake-model", False), direct_headers)
            targets = {
                "upstream direct": (direct_url, _body("fake-model", args.stream), direct_headers),
                "gateway, miss": (url, _body("uncached", args.stream), gateway_headers),
                "gateway, hit": (url, _body("cached", args.stream), gateway_headers),
                "semantic hit": (url, _body("semantic", args.stream, _REWORDED), gateway_headers),
            }
            gateway.wait_ready(url, _body("uncached", False), gateway_headers, timeout_s=120)
            # Store the answers the hit targets replay: the same body, and the conversation the rewording finds.
            _cache_result(*targets["gateway, hit"])
            _cache_result(url, _body("semantic", args.stream), gateway_headers)
            time.sleep(0.5)  # entries are written after the response
            cores = placement()
            shared = cores[0] if cores is not None else None
            if cores is not None:
                upstream.pin(cores[0])
                gateway.pin(cores[1])
            for name in ("gateway, hit", "semantic hit"):
                result = _cache_result(*targets[name])
                if result != "hit":
                    print(f"error: {name!r} is a cache {result}, not a hit; see {work / 'gateway.log'}", file=sys.stderr)
                    return 1
            for name, (target_url, body, headers) in targets.items():
                run_wrk(target_url, body, headers, duration_s=2, concurrency=args.concurrency, cpus=shared)  # warm-up
                before = gateway.cpu_seconds()
                results[name] = run_wrk(target_url, body, headers, duration_s=args.duration, concurrency=args.concurrency, cpus=shared)
                if name != "upstream direct" and results[name].requests:
                    cpu_us[name] = (gateway.cpu_seconds() - before) * 1e6 / results[name].requests
        finally:
            gateway.stop()
            upstream.stop()
    mode = "stream" if args.stream else "non-stream"
    print(f"{'target':<16} {'mode':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us':>8}")
    for name, result in results.items():
        cpu = f"{cpu_us[name]:8.1f}" if name in cpu_us else f"{'-':>8}"
        print(f"{name:<16} {mode:<10} {result.rps:9.0f} {result.p50_ms:8.2f} {result.p99_ms:8.2f} {cpu}")
    miss, hit, semantic = results["gateway, miss"], results["gateway, hit"], results["semantic hit"]
    print(f"hit / miss req/s: {hit.rps / miss.rps:.2f}x; semantic hit / miss: {semantic.rps / miss.rps:.2f}x")
    if "gateway, miss" in cpu_us and "gateway, hit" in cpu_us:
        print(f"gateway CPU per request, hit / miss: {cpu_us['gateway, hit'] / cpu_us['gateway, miss']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
