"""What the gateway costs per request, next to the cheapest possible Python hop.

``python -m bench.overhead [--rounds 3] [--duration 5] [--concurrency 64] [--stream-chunks 20]``

Starts the servers as subprocesses on free loopback ports: the fake upstream,
the minimal pass-through (``bench.passthrough``), and Sluicegate (one worker)
three times over, all pointed at the same fake:

- ``sluicegate``: the foundation: auth, validation, routing, metrics; no
  limits, no budgets, no ledger;
- ``sluicegate-limits``: plus the admission path: per-tenant RPM, TPM and
  concurrency limits (in-process counter store), far above the load;
- ``sluicegate-budgets``: the foundation plus a money and a token budget and
  the SQLite ledger;
- ``sluicegate-all``: limits, budgets and the ledger together.

Then, for each target and for non-streamed and streamed chat completions, it
runs ``wrk -t1 -c<concurrency> -d<duration>s`` after a short warm-up and prints
req/s, p50 and p99 latency, the server's CPU time per request, and the ratios:
the foundation against the pass-through, the others against the foundation.

Every server is started once; the measurements then go round the targets
``--rounds`` times. A shared machine drifts (other tenants, frequency, cache
pressure) by more than the differences being measured, so one pass per target
would compare moments as much as servers. Each round starts one target further
on, so that none always goes first. The table gives each figure's median over
the rounds; each ratio is taken within a round (targets measured minutes apart
are never compared) and reported as the median with its range.

CPU placement (``--pin``, the default when at least two CPUs are available):
the server being measured owns the last CPU; wrk and the fake upstream share
the first one. wrk is cheap next to any Python server, and giving the hop under
test a whole core makes its figure depend on its own cost, not the scheduler.
For the direct row the fake itself is the server under test. ``--no-pin``
leaves placement to the OS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.processes import Server, free_port
from bench.wrk import WrkMissing, find_wrk, run_wrk

BENCH_KEY = "sk-bench-0123456789"
MODEL = "fake-model"
TARGETS = ("upstream", "passthrough", "sluicegate", "sluicegate-limits", "sluicegate-budgets", "sluicegate-all")
LABELS = {
    "upstream": "upstream direct",
    "passthrough": "passthrough",
    "sluicegate": "sluicegate",
    "sluicegate-limits": "sg+limits",
    "sluicegate-budgets": "sg+budgets+ledger",
    "sluicegate-all": "sg+all",
}
# Which features each Sluicegate target turns on.
FEATURES = {"sluicegate": "plain", "sluicegate-limits": "limits", "sluicegate-budgets": "budgets", "sluicegate-all": "all"}
_CHAT_PATH = "/v1/chat/completions"
_MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]


@dataclass(frozen=True, slots=True)
class Row:
    target: str
    mode: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    # Server CPU time (user + system) per request: steadier than req/s on a busy machine.
    cpu_us: float = 0.0


def request_body(stream: bool) -> bytes:
    body: dict[str, object] = {"model": MODEL, "messages": _MESSAGES}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(body, separators=(",", ":")).encode()


def request_headers(target: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if target.startswith("sluicegate"):
        headers["Authorization"] = f"Bearer {BENCH_KEY}"
    return headers


def bench_key_hash() -> str:
    # the gateway's own hashing, so the stored hash matches the key we send
    from router.auth import hash_api_key

    return hash_api_key(BENCH_KEY)


# The admission and budget path fully on, with limits far above the load so nothing is refused.
_LIMITS = "    limits: {rpm: 100000000, tpm: 1000000000000, max_concurrent: 100000}"
_BUDGETS = "    budgets: [{kind: money, period: monthly, limit: 9000000000000}, {kind: tokens, period: daily, limit: 1000000000000000}]"


def sluicegate_config(upstream_url: str, key_hash: str, features: str = "plain") -> str:
    """The gateway's YAML config (``features``: plain, limits, budgets or all); JSON strings are valid YAML scalars."""
    if features not in ("plain", "limits", "budgets", "all"):
        raise ValueError(f"unknown feature set {features!r}")
    q = json.dumps
    tenant = {"plain": [], "limits": [_LIMITS], "budgets": [_BUDGETS], "all": [_LIMITS, _BUDGETS]}[features]
    ledger = "state: {ledger: \"off\"}" if features in ("plain", "limits") else "state: {ledger: sqlite, ledger_path: ledger.sqlite}"
    price = ["    price: {input_per_mtok: 2500000, output_per_mtok: 10000000}"]
    return "\n".join(
        [
            "server: {log_level: warning}",
            "deployments:",
            "  - name: fake",
            "    provider: openai",
            f"    base_url: {q(upstream_url)}",
            f"    model: {q(MODEL)}",
            *price,
            "models:",
            f"  - alias: {q(MODEL)}",
            "    deployments: [fake]",
            "tenants:",
            "  - id: bench",
            *tenant,
            "    keys:",
            "      - id: bench-key",
            f"        hash: {q(key_hash)}",
            ledger,
            "",
        ]
    )


def _servers(work: Path, chunks: int) -> tuple[dict[str, Server], dict[str, str]]:
    """The three servers (not yet started) and each one's chat completions URL."""
    python = sys.executable
    ports = {name: free_port() for name in TARGETS}
    upstream_root = f"http://127.0.0.1:{ports['upstream']}"
    argvs = {
        "upstream": [python, "-m", "bench.fake_upstream", "--port", str(ports["upstream"]), "--chunks", str(chunks)],
        "passthrough": [
            python, "-m", "bench.passthrough", "--upstream", upstream_root, "--port", str(ports["passthrough"]),
        ],
        "sluicegate": [
            python, "-m", "router", "serve", "--config", str(work / "sluicegate.yaml"),
            "--host", "127.0.0.1", "--port", str(ports["sluicegate"]), "--workers", "1",
        ],
        **{
            name: [
                python, "-m", "router", "serve", "--config", str(work / f"{name}.yaml"),
                "--host", "127.0.0.1", "--port", str(ports[name]), "--workers", "1",
            ]
            for name in ("sluicegate-limits", "sluicegate-budgets", "sluicegate-all")
        },
    }  # fmt: skip
    servers = {name: Server(LABELS[name], argv, work / f"{name}.log", work) for name, argv in argvs.items()}
    urls = {name: f"http://127.0.0.1:{port}{_CHAT_PATH}" for name, port in ports.items()}
    return servers, urls


def _start(name: str, server: Server, url: str, work: Path, upstream_url: str) -> None:
    if name.startswith("sluicegate"):
        config = sluicegate_config(upstream_url, bench_key_hash(), FEATURES[name])
        (work / f"{name}.yaml").write_text(config)
    server.start()
    for stream in (False, True):
        answer = server.wait_ready(url, request_body(stream), request_headers(name))
        if stream and b"[DONE]" not in answer:
            raise RuntimeError(f"{server.name} answered a stream without [DONE]")


def _placement(pin: bool) -> tuple[set[int], set[int]] | None:
    """(CPUs for wrk and the fake, CPU for the server under test), if pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None
    return {cpus[0]}, {cpus[-1]}


def _measure(name: str, args: argparse.Namespace, servers: dict[str, Server], urls: dict[str, str]) -> list[Row]:
    placement = _placement(args.pin)
    if placement is not None:
        shared, own = placement
        servers["upstream"].pin(shared)
        servers[name].pin(own)
    rows = []
    for stream in (False, True):
        body, headers = request_body(stream), request_headers(name)
        cpus = placement[0] if placement else None
        if args.warmup > 0:
            run_wrk(urls[name], body, headers, duration_s=args.warmup, concurrency=args.concurrency, cpus=cpus)
        before = servers[name].cpu_seconds()
        result = run_wrk(urls[name], body, headers, duration_s=args.duration, concurrency=args.concurrency, cpus=cpus)
        requests = result.rps * args.duration
        cpu_us = (servers[name].cpu_seconds() - before) / requests * 1e6 if requests else 0.0
        mode = "stream" if stream else "non-stream"
        rows.append(Row(LABELS[name], mode, result.rps, result.p50_ms, result.p99_ms, result.errors, round(cpu_us, 1)))
        print(f"  {LABELS[name]:<16} {mode:<10} {result.rps:9.1f} req/s {cpu_us:7.1f} us/req", file=sys.stderr, flush=True)
    return rows


def median_rows(rounds: list[list[Row]]) -> list[Row]:
    """Each (target, mode)'s median figures over the rounds; errors are summed."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for rows in rounds:
        for row in rows:
            groups.setdefault((row.target, row.mode), []).append(row)
    return [
        Row(
            target,
            mode,
            rps=statistics.median(r.rps for r in group),
            p50_ms=statistics.median(r.p50_ms for r in group),
            p99_ms=statistics.median(r.p99_ms for r in group),
            errors=sum(r.errors for r in group),
            cpu_us=round(statistics.median(r.cpu_us for r in group), 1),
        )
        for (target, mode), group in groups.items()
    ]


def _ratio(rows: list[Row], target: str, base: str, metric: str) -> dict[str, float]:
    values = {(r.target, r.mode): getattr(r, metric) for r in rows}
    out = {}
    for mode in ("non-stream", "stream"):
        floor, ours = values.get((LABELS.get(base, base), mode)), values.get((LABELS.get(target, target), mode))
        if floor and ours:
            out[mode] = round(100 * ours / floor, 1)
    return out


def percent_of_passthrough(rows: list[Row], target: str = "sluicegate", base: str = "passthrough") -> dict[str, float]:
    return _ratio(rows, target, base, "rps")


def cpu_ratio(rows: list[Row], target: str, base: str) -> dict[str, float]:
    """Server CPU per request of ``target`` as % of ``base``'s: the cost of the added work."""
    return _ratio(rows, target, base, "cpu_us")


def paired(rounds: list[list[Row]], target: str, base: str, metric: str) -> dict[str, tuple[float, float, float]]:
    """A ratio taken within each round: mode --> (median, lowest, highest) over the rounds."""
    per_mode: dict[str, list[float]] = {}
    for rows in rounds:
        for mode, value in _ratio(rows, target, base, metric).items():
            per_mode.setdefault(mode, []).append(value)
    return {mode: (round(statistics.median(v), 1), min(v), max(v)) for mode, v in per_mode.items()}


# (target, base, what the req/s ratio says, what the CPU ratio says)
_COMPARISONS = (
    ("sluicegate", "passthrough", "sluicegate req/s as % of passthrough", "sluicegate CPU/req as % of passthrough"),
    ("sluicegate-limits", "sluicegate", "with limits, req/s as % of sluicegate", "limits CPU/req as % of sluicegate"),
    ("sluicegate-budgets", "sluicegate", "with budgets+ledger, req/s as % of sluicegate", "budgets+ledger CPU/req as % of sluicegate"),
    ("sluicegate-all", "sluicegate", "with limits+budgets+ledger, req/s as % of sluicegate", "limits+budgets+ledger CPU/req as % of sluicegate"),
)


def render(rounds: list[list[Row]]) -> str:
    rows = median_rows(rounds)
    head = f"{'target':<18} {'mode':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} {'errors':>7}"
    lines = [head]
    lines += [
        f"{r.target:<18} {r.mode:<10} {r.rps:9.1f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.cpu_us:11.1f} {r.errors:7d}"
        for r in rows
    ]
    if len(rounds) > 1:
        lines.append(f"medians of {len(rounds)} rounds; ratios: median within-round ratio [lowest-highest]")
    for metric, column in (("rps", 2), ("cpu_us", 3)):
        for comparison in _COMPARISONS:
            ratio = paired(rounds, comparison[0], comparison[1], metric)
            if ratio:
                parts = [
                    f"{mode} {mid:.1f}%" + (f" [{low:.1f}-{high:.1f}]" if len(rounds) > 1 else "")
                    for mode, (mid, low, high) in ratio.items()
                ]
                lines.append(f"{comparison[column]}: " + ", ".join(parts))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> tuple[list[list[Row]], list[str]]:
    """Measure every reachable target, ``args.rounds`` times over; the failures come back as messages."""
    rounds: list[list[Row]] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sluicegate-bench-") as tmp:
        work = Path(tmp)
        servers, urls = _servers(work, args.stream_chunks)
        upstream_url = urls["upstream"].removesuffix("/chat/completions")
        try:
            started = []
            for name in ["upstream", *(t for t in args.targets if t != "upstream")]:
                try:
                    _start(name, servers[name], urls[name], work, upstream_url)
                except (RuntimeError, ImportError, OSError) as exc:
                    if name == "upstream":
                        raise
                    failures.append(f"{LABELS[name]} skipped: {exc}")
                    continue
                started.append(name)
            measured = [name for name in started if name in args.targets]
            for number in range(args.rounds):
                print(f"round {number + 1} of {args.rounds}", file=sys.stderr, flush=True)
                # Each round starts one target further on: no target always goes first.
                shift = number % len(measured) if measured else 0
                order = measured[shift:] + measured[:shift]
                rounds.append([row for name in order for row in _measure(name, args, servers, urls)])
        finally:
            for server in servers.values():
                server.stop()
    return rounds, failures


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over all targets; figures are medians")
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of load before each measurement")
    parser.add_argument("--concurrency", type=int, default=64, help="open connections")
    parser.add_argument("--stream-chunks", type=int, default=20, help="content chunks per streamed reply")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of " + ", ".join(TARGETS))
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True, help="pin processes to CPUs")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.duration < 1 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--rounds, --duration and --concurrency must be at least 1")
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        find_wrk()
    except WrkMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rounds, failures = run(args)
    print(render(rounds))
    for failure in failures:
        print(f"warning: {failure}", file=sys.stderr)
    if args.json is not None:
        payload = {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "stream_chunks": args.stream_chunks,
            "pinned": _placement(args.pin) is not None,
            "medians": [asdict(r) for r in median_rows(rounds)],
            "rounds_results": [[asdict(r) for r in rows] for rows in rounds],
            "sluicegate_pct_of_passthrough": {m: v[0] for m, v in paired(rounds, "sluicegate", "passthrough", "rps").items()},
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
