"""What the MCP gateway adds to a tool call: ``tools/call`` through the gateway's ``/mcp`` and straight to the server.

``python -m bench.mcp_overhead [--calls 2000] [--concurrency 8] [--rounds 2]``

Starts the well-behaved upstream MCP server of the tests
(``tests/fakes/mcp_upstreams.py good``) and a gateway whose mcp plugin fronts
it (one tenant granted ``good/*``, no PII policy, no limits: the grant,
admission, the deadline, the size limit, metrics and the audit entry are what
a call pays). Then, with the official ``mcp`` client, ``--concurrency``
workers (one session each) call ``echo`` until ``--calls`` calls are done,
against the gateway and against the server directly, in alternating rounds
(``--rounds`` each, after a warm-up). Prints p50, p99 and calls/s of both, and
what the gateway adds per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import httpx2
import mcp_types as types
import msgspec
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bench.processes import REPO_ROOT, free_port
from router.auth import hash_api_key

KEY = "sk-bench-mcp-" + secrets.token_hex(16)
WARMUP_CALLS = 200
START_TIMEOUT_S = 60.0


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path
    url: str

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _start(args: list[str], log: Path, url: str, ready: str) -> Proc:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
    with log.open("wb") as out:
        popen = subprocess.Popen(args, cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc = Proc(popen, log, url)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{args[2:4]} exited with {popen.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url + ready, timeout=1.0).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.stop()
    raise RuntimeError(f"{args[2:4]} did not become ready:\n{log.read_text(errors='replace')[-3000:]}")


def _settings(upstream: str) -> dict[str, object]:
    return {
        "server": {"host": "127.0.0.1"},
        "tenants": [{"id": "bench", "mcp_tools": ["good/*"], "keys": [{"id": "bench-key", "hash": hash_api_key(KEY)}]}],
        "plugins": [{"name": "mcp", "options": {"servers": [{"name": "good", "url": upstream + "/mcp"}]}}],
    }


@asynccontextmanager
async def _session(url: str, headers: dict[str, str]) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


async def _measure(url: str, headers: dict[str, str], tool: str, calls: int, concurrency: int) -> tuple[list[float], float]:
    """Latencies (seconds) of ``calls`` calls by ``concurrency`` workers, and the wall time they took."""
    left = calls
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal left
        async with _session(url, headers) as client:
            while left > 0:
                left -= 1
                started = time.perf_counter()
                result = await client.call_tool(tool, {"text": "ping"})
                latencies.append(time.perf_counter() - started)
                text = "".join(c.text for c in result.content if isinstance(c, types.TextContent))
                if result.is_error or text != "ping":
                    raise RuntimeError(f"{tool} answered {text[:200]!r}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(gateway: str, direct: str, calls: int, concurrency: int, rounds: int) -> None:
    targets = {
        "gateway": (gateway + "/mcp", {"Authorization": f"Bearer {KEY}"}, "good__echo"),
        "direct": (direct + "/mcp", {}, "echo"),
    }
    for url, headers, tool in targets.values():
        await _measure(url, headers, tool, WARMUP_CALLS, concurrency)
    found: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name in targets}
    per_round = max(1, calls // rounds)
    for _ in range(rounds):
        for name, (url, headers, tool) in targets.items():
            latencies, wall = await _measure(url, headers, tool, per_round, concurrency)
            found[name][0].extend(latencies)
            found[name] = (found[name][0], found[name][1] + wall)
    print(f"tools/call of echo, {per_round * rounds} calls each, concurrency {concurrency}, {rounds} alternating rounds")
    print(f"{'':8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'calls/s':>9}")
    stats = {}
    for name, (latencies, wall) in found.items():
        stats[name] = (_quantile(latencies, 0.5), _quantile(latencies, 0.99), statistics.fmean(latencies), len(latencies) / wall)
        p50, p99, mean, rate = stats[name]
        print(f"{name:8} {p50 * 1000:8.2f} {p99 * 1000:8.2f} {mean * 1000:8.2f} {rate:9.0f}")
    (g50, g99, gmean, _), (d50, d99, dmean, _) = stats["gateway"], stats["direct"]
    print(f"added    {(g50 - d50) * 1000:8.2f} {(g99 - d99) * 1000:8.2f} {(gmean - dmean) * 1000:8.2f}   (ms per call)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcp-overhead-") as tmp:
        work = Path(tmp)
        port = free_port()
        upstream = _start(
            [sys.executable, "-m", "tests.fakes.mcp_upstreams", "good", "--port", str(port)], work / "upstream.log",
            f"http://127.0.0.1:{port}", "/healthz",
        )  # fmt: skip
        gateway: Proc | None = None
        try:
            config = work / "sluicegate.yaml"
            config.write_bytes(msgspec.yaml.encode(_settings(upstream.url)))
            port = free_port()
            gateway = _start(
                [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(port)], work / "gateway.log",
                f"http://127.0.0.1:{port}", "/healthz",
            )  # fmt: skip
            asyncio.run(_run(gateway.url, upstream.url, args.calls, args.concurrency, args.rounds))
        finally:
            for proc in (gateway, upstream):
                if proc is not None:
                    proc.stop()


if __name__ == "__main__":
    main()
