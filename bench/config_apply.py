"""Commit-to-served latency of a live config change across gateway replicas.

``python -m bench.config_apply [--changes 100] [--replicas 3] [--redis-url URL] [--reconcile-s 5]``

Starts a fake upstream, a redis-server of its own on a free port (or uses
``--redis-url``: the announcement channel has one name per Redis server, so a
Redis shared with other runs mixes their versions into this one's), a scratch
PostgreSQL database and ``--replicas`` gateways with ``state.config: postgres``.
It then commits ``--changes`` versions through replica 0's admin route, one at
a time (a deployment's price, alternating), and for each measures, from the
version's ``created_at`` in the PUT's answer (PostgreSQL's clock) until each
replica's ``GET /admin/v1/config`` names it, polling every replica. It also
reads each replica's own ``sluicegate_config_apply_latency_seconds`` histogram
(bucket-interpolated as Prometheus's ``histogram_quantile``). Prints
p50/p95/p99/max in ms per replica and overall, and the commit latency (the
PUT's round trip). Every process it starts is stopped and the database dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import redis
from prometheus_client.parser import text_string_to_metric_families

from bench.chat_load import percentile
from bench.processes import Server, free_port
from router.auth import hash_api_key

OPS_KEY = "sk-bench-config-ops-" + secrets.token_hex(8)
USER_KEY = "sk-bench-config-user-" + secrets.token_hex(8)
PRICES = (1_000_000, 3_000_000)
HISTOGRAM = "sluicegate_config_apply_latency_seconds"
_CHAT = msgspec.json.encode({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
Buckets = list[tuple[float, float]]


@dataclass(frozen=True)
class Histogram:
    # (upper bound, cumulative count), ascending; the last bound is +Inf.
    buckets: Buckets
    sum_s: float

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0

    def since(self, earlier: Histogram) -> Histogram:
        before = dict(earlier.buckets)
        return Histogram([(b, c - before.get(b, 0.0)) for b, c in self.buckets], self.sum_s - earlier.sum_s)


@dataclass(frozen=True)
class Change:
    commit_s: float
    # Per replica: from the version's created_at until that replica was seen serving it.
    served_s: list[float]


def replica_config(port: int, upstream: str, dsn: str, redis_url: str, reconcile_s: float) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": port, "log_level": "warning", "grace_period_s": 4},
        "deployments": [{"name": "d", "provider": "openai", "base_url": upstream, "model": "fake-model",
                         "price": {"input_per_mtok": PRICES[0], "output_per_mtok": 2_000_000}}],
        "models": [{"alias": "m", "deployments": ["d"]}],
        "tenants": [
            {"id": "ops", "keys": [{"id": "ops", "hash": hash_api_key(OPS_KEY), "scopes": ["ops:*"]}]},
            {"id": "user", "keys": [{"id": "user", "hash": hash_api_key(USER_KEY)}]},
        ],
        "state": {"config": "postgres", "postgres_dsn": dsn, "redis_url": redis_url, "counters": "redis", "ledger": "off",
                  "config_reconcile_s": reconcile_s},
    }


def histogram_quantile(q: float, buckets: Buckets) -> float:
    """As Prometheus's: linear within the bucket the rank falls in; ``buckets`` are (upper bound, cumulative count)."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return math.nan
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is all that is known
            return lower + (bound - lower) * (rank - below) / (count - below) if count > below else bound
        lower, below = bound, count
    return lower


def apply_histogram(metrics_text: str) -> Histogram:
    """The replica's apply-latency histogram, read from its /metrics text."""
    name = HISTOGRAM.removesuffix("_seconds")  # the parser names the family without the unit
    for family in text_string_to_metric_families(metrics_text):
        if family.name in (HISTOGRAM, name):
            samples = family.samples
            buckets = sorted((float(s.labels["le"]), s.value) for s in samples if s.name == HISTOGRAM + "_bucket")
            return Histogram(buckets, sum(s.value for s in samples if s.name == HISTOGRAM + "_sum"))
    raise RuntimeError(f"{HISTOGRAM} is not in the replica's /metrics")


# --- the processes -----------------------------------------------------------------


def _start_redis(work: Path, servers: list[Server]) -> str:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not on PATH: pass --redis-url")
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(work)]
    server = Server("redis", argv, work / "redis.log", work)
    servers.append(server)
    server.start()
    client = redis.Redis(port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except (redis.RedisError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer; log:\n{server.log_tail()}") from None
            time.sleep(0.05)
    client.close()
    return f"redis://127.0.0.1:{port}/0"


def _start_upstream(work: Path, servers: list[Server]) -> str:
    port = free_port()
    argv = [sys.executable, "-m", "bench.fake_upstream", "--host", "127.0.0.1", "--port", str(port)]
    server = Server("fake-upstream", argv, work / "upstream.log", work)
    servers.append(server)
    server.start()
    url = f"http://127.0.0.1:{port}/v1"
    server.wait_ready(f"{url}/chat/completions", _CHAT, {"content-type": "application/json"})
    return url


def _start_replicas(args: argparse.Namespace, work: Path, servers: list[Server], upstream: str, dsn: str, redis_url: str) -> list[str]:
    started: list[tuple[Server, str]] = []
    for i in range(args.replicas):
        home = work / f"replica{i}"
        home.mkdir()
        port = free_port()
        config = home / "sluicegate.yaml"
        config.write_bytes(msgspec.yaml.encode(replica_config(port, upstream, dsn, redis_url, args.reconcile_s)))
        server = Server(f"replica {i}", [sys.executable, "-m", "router", "serve", "--config", str(config)], home / "replica.log", home)
        servers.append(server)
        server.start()
        started.append((server, f"http://127.0.0.1:{port}"))
    headers = {"content-type": "application/json", "authorization": f"Bearer {USER_KEY}"}
    for server, url in started:  # they start side by side; a real request shows each serves
        server.wait_ready(f"{url}/v1/chat/completions", _CHAT, headers, timeout_s=60)
    return [url for _, url in started]


async def _admin(admin_dsn: str, statement: str) -> None:
    admin = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


# --- measuring ---------------------------------------------------------------------

_OPS = {"authorization": f"Bearer {OPS_KEY}"}


async def _served(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{url}/admin/v1/config", headers=_OPS) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: GET /admin/v1/config answered {r.status}: {(await r.text())[:300]}")
        body = await r.json()
        return int(body["version"]), dict(body["config"])


async def _seen_at(http: aiohttp.ClientSession, url: str, version: int, poll_s: float, timeout_s: float = 30.0) -> float:
    """The wall-clock time a poll of ``url`` first found ``version`` (or newer) served."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with http.get(f"{url}/admin/v1/config", headers=_OPS) as r:
            await r.read()
            if r.status == 200 and int(r.headers["etag"].strip('"')) >= version:
                return time.time()
        await asyncio.sleep(poll_s)
    raise RuntimeError(f"{url} did not serve version {version} within {timeout_s:.0f} s")


async def _change(
    http: aiohttp.ClientSession, urls: list[str], document: dict[str, Any], version: int, poll_s: float
) -> tuple[int, Change]:
    headers = {**_OPS, "if-match": f'"{version}"'}
    sent = time.perf_counter()
    async with http.put(f"{urls[0]}/admin/v1/config", json={"config": document, "reason": "bench"}, headers=headers) as r:
        body = await r.json()
        if r.status != 200:
            raise RuntimeError(f"PUT /admin/v1/config answered {r.status}: {body}")
    commit_s = time.perf_counter() - sent
    new, created_at = int(body["version"]), float(body["created_at"])
    seen = await asyncio.gather(*(_seen_at(http, url, new, poll_s) for url in urls))
    return new, Change(commit_s, [t - created_at for t in seen])


async def _histograms(http: aiohttp.ClientSession, urls: list[str]) -> list[Histogram]:
    out = []
    for url in urls:
        async with http.get(f"{url}/metrics") as r:
            out.append(apply_histogram(await r.text()))
    return out


async def measure(urls: list[str], changes: int, poll_s: float) -> tuple[list[Change], list[Histogram]]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)) as http:
        version, document = await _served(http, urls[0])
        before = await _histograms(http, urls)
        results = []
        for n in range(changes):
            document["deployments"][0]["price"]["input_per_mtok"] = PRICES[(n + 1) % 2]
            version, change = await _change(http, urls, document, version, poll_s)
            results.append(change)
        after = await _histograms(http, urls)
    return results, [a.since(b) for a, b in zip(after, before)]


# --- the report ----------------------------------------------------------------------


def _ms_row(label: str, seconds: Sequence[float]) -> str:
    figures = [percentile(seconds, q) * 1000 for q in (50, 95, 99)] + [max(seconds) * 1000]
    return f"{label:<14}{len(seconds):>6}" + "".join(f"{f:>9.1f}" for f in figures)


def render(changes: list[Change], histograms: list[Histogram], args: argparse.Namespace) -> str:
    head = f"{'':<14}{'n':>6}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}"
    title = (f"config apply: {len(changes)} changes through replica 0, {args.replicas} replicas, "
             f"reconcile every {args.reconcile_s:g} s, polled every {args.poll_ms:g} ms; figures in ms")
    lines = [title, "", "commit: the PUT's round trip", head, _ms_row("replica 0", [c.commit_s for c in changes]), "",
             "committed (created_at) -> served, seen by polling each replica's admin route", head]
    for i in range(args.replicas):
        lines.append(_ms_row(f"replica {i}" + (" (w)" if i == 0 else ""), [c.served_s[i] for c in changes]))
    lines.append(_ms_row("all", [s for c in changes for s in c.served_s]))
    everywhere = [max(c.served_s) for c in changes]
    lines += [_ms_row("everywhere", everywhere), "", f"the replicas' own {HISTOGRAM} (bucket-interpolated)",
              f"{'':<14}{'n':>6}{'p50':>9}{'p95':>9}{'p99':>9}{'mean':>9}"]  # fmt: skip
    for i, h in enumerate(histograms):
        figures = [histogram_quantile(q, h.buckets) * 1000 for q in (0.5, 0.95, 0.99)]
        figures.append(h.sum_s / h.count * 1000 if h.count else math.nan)
        lines.append(f"{f'replica {i}':<14}{h.count:>6.0f}" + "".join(f"{f:>9.1f}" for f in figures))
    lines.append("(its buckets end at 5, 10, 25, 50, 100, 250 ms...: a quantile is interpolated inside one; the mean is exact)")
    return "\n".join(lines)


async def run(args: argparse.Namespace, work: Path) -> tuple[list[Change], list[Histogram]]:
    servers: list[Server] = []
    database = f"sg_bench_config_{secrets.token_hex(5)}"
    await _admin(args.postgres_dsn, f"CREATE DATABASE {database}")
    try:
        redis_url = args.redis_url or _start_redis(work, servers)
        upstream = _start_upstream(work, servers)
        dsn = f"{args.postgres_dsn.rsplit('/', 1)[0]}/{database}"
        urls = _start_replicas(args, work, servers, upstream, dsn, redis_url)
        return await measure(urls, args.changes, args.poll_ms / 1000)
    finally:
        for server in reversed(servers):
            server.stop()
        await _admin(args.postgres_dsn, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.config_apply", description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=100, help="versions to commit (default 100)")
    parser.add_argument("--replicas", type=int, default=3, help="gateway processes (default 3)")
    parser.add_argument("--redis-url", help="a Redis to share (default: a redis-server of its own)")
    parser.add_argument("--postgres-dsn", default="postgresql://postgres@127.0.0.1:5432/test", help="PostgreSQL admin DSN")
    parser.add_argument("--reconcile-s", type=float, default=5.0, help="state.config_reconcile_s of the replicas")
    parser.add_argument("--poll-ms", type=float, default=2.0, help="pause between polls of one replica")
    args = parser.parse_args(argv)
    if args.changes < 1 or args.replicas < 1 or args.reconcile_s <= 0 or args.poll_ms < 0:
        parser.error("--changes and --replicas must be at least 1, --reconcile-s positive, --poll-ms not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sluicegate-config-apply-") as tmp:
        changes, histograms = asyncio.run(run(args, Path(tmp)))
    print(render(changes, histograms, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
