"""What the gateway costs per request, next to the cheapest possible Python hop.

``python -m bench.overhead [--rounds 3] [--duration 5] [--concurrency 64] [--stream-chunks 20]``

Starts the servers as subprocesses on free loopback ports: the fake upstream,
the minimal pass-through (``bench.passthrough``), and Sluicegate (one worker)
five times over (six with the optional target), all pointed at the same fake:

- ``sluicegate``: the foundation: auth, validation, routing, metrics; no
  limits, no budgets, no ledger;
- ``sluicegate-limits``: plus the admission path: per-tenant RPM, TPM and
  concurrency limits (in-process counter store), far above the load;
- ``sluicegate-budgets``: the foundation plus a money and a token budget and
  the SQLite ledger;
- ``sluicegate-all``: limits, budgets and the ledger together;
- ``sluicegate-twin``: a second foundation, identical to the first;
- ``sluicegate-all-quiet``: the full pipeline with its access log off
  (``server.access_log: false``), measured only when ``--targets`` names it.

Two phases. First, each target alone (the table: req/s, latency, CPU per
request). Then the paired phase (``bench.paired``): the foundation and one
feature target at a time under load at the same moment, on the same core, so
that both see the same machine; it prints each feature's CPU per request as a
percentage of the foundation's, per round, as a median with its range, and the
same for a twin of the foundation (what the method reads for no difference).

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
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench.overhead_report import Row, median_rows, paired, render
from bench.overhead_targets import (
    CHAT_PATH,
    FEATURES,
    LABELS,
    OPTIONAL,
    PAIRED,
    TARGETS,
    bench_key_hash,
    request_body,
    request_headers,
    serve_argv,
    sluicegate_config,
)
from bench.paired import PairResult, Side, measure_pair, render_pairs
from bench.processes import Server, free_port, placement
from bench.wrk import run_wrk, wrk_ready


def _servers(work: Path, chunks: int) -> tuple[dict[str, Server], dict[str, str]]:
    """Every server (not yet started) and each one's chat completions URL."""
    python = sys.executable
    ports = {name: free_port() for name in (*TARGETS, *OPTIONAL, "sluicegate-twin")}
    upstream_root = f"http://127.0.0.1:{ports['upstream']}"
    argvs = {
        "upstream": [python, "-m", "bench.fake_upstream", "--port", str(ports["upstream"]), "--chunks", str(chunks)],
        "passthrough": [
            python, "-m", "bench.passthrough", "--upstream", upstream_root, "--port", str(ports["passthrough"]),
        ],
        **{
            name: serve_argv(work / f"{name}.yaml", ports[name])
            for name in FEATURES  # every Sluicegate target, the twin and the optional ones included
        },
    }  # fmt: skip
    servers = {name: Server(LABELS[name], argv, work / f"{name}.log", work) for name, argv in argvs.items()}
    urls = {name: f"http://127.0.0.1:{port}{CHAT_PATH}" for name, port in ports.items()}
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


def _paired(args: argparse.Namespace, servers: dict[str, Server], urls: dict[str, str], started: list[str]) -> list[PairResult]:
    """The paired phase: each feature target beside the foundation, at the same moment."""
    if args.pair_rounds < 1 or "sluicegate" not in started:
        return []
    results = []
    for stream in (False, True):
        body, mode = request_body(stream), "stream" if stream else "non-stream"
        base = Side(servers["sluicegate"], urls["sluicegate"], body, request_headers("sluicegate"))
        for name in PAIRED:
            if name not in started:
                continue
            target = Side(servers[name], urls[name], body, request_headers(name))
            result = measure_pair(
                base, target, (LABELS[name], LABELS["sluicegate"], mode), rounds=args.pair_rounds,
                duration_s=args.duration, warmup_s=args.warmup, concurrency=max(1, args.concurrency // 2),
                cpus=_placement(args.pin),
            )  # fmt: skip
            mid, low, high = result.summary()
            print(f"  paired {LABELS[name]:<18} {mode:<10} {mid:6.1f}% [{low:.1f}-{high:.1f}]", file=sys.stderr, flush=True)
            results.append(result)
    return results


def _placement(pin: bool) -> tuple[set[int], set[int]] | None:
    """(CPUs for wrk and the fake, CPU for the server under test), if pinning."""
    return placement() if pin else None


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


def run(args: argparse.Namespace) -> tuple[list[list[Row]], list[PairResult], list[str]]:
    """Measure every reachable target, ``args.rounds`` times over, then the pairs; failures come back as messages."""
    rounds: list[list[Row]] = []
    pairs: list[PairResult] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sluicegate-bench-") as tmp:
        work = Path(tmp)
        servers, urls = _servers(work, args.stream_chunks)
        upstream_url = urls["upstream"].removesuffix("/chat/completions")
        try:
            started = []
            wanted = [t for t in args.targets if t != "upstream"]
            if args.pair_rounds > 0:
                wanted += [t for t in PAIRED if t not in wanted and (t == "sluicegate-twin" or t in args.targets)]
            for name in ["upstream", *wanted]:
                try:
                    _start(name, servers[name], urls[name], work, upstream_url)
                except (RuntimeError, ImportError, OSError) as exc:
                    if name == "upstream":
                        raise
                    failures.append(f"{LABELS[name]} skipped: {exc}")
                    continue
                started.append(name)
            # The twin goes through the same rounds as the foundation: paired, both then have the same history.
            measured = [name for name in started if name in args.targets or name == "sluicegate-twin"]
            for number in range(args.rounds):
                print(f"round {number + 1} of {args.rounds}", file=sys.stderr, flush=True)
                # Each round starts one target further on: no target always goes first.
                shift = number % len(measured) if measured else 0
                order = measured[shift:] + measured[:shift]
                rounds.append([row for name in order for row in _measure(name, args, servers, urls)])
            pairs = _paired(args, servers, urls, started)
        finally:
            for server in servers.values():
                server.stop()
    return rounds, pairs, failures


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over all targets; figures are medians")
    parser.add_argument("--pair-rounds", type=int, default=8, help="rounds of each paired measurement (0: skip the phase)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of load before each measurement")
    parser.add_argument("--concurrency", type=int, default=64, help="open connections")
    parser.add_argument("--stream-chunks", type=int, default=20, help="content chunks per streamed reply")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="comma-separated, of " + ", ".join((*TARGETS, *OPTIONAL)) + " (the last only when named)",
    )
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True, help="pin processes to CPUs")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.duration < 1 or args.concurrency < 1 or args.rounds < 1 or args.pair_rounds < 0:
        parser.error("--rounds, --duration and --concurrency must be at least 1, --pair-rounds at least 0")
    unknown = set(args.targets) - set(TARGETS) - set(OPTIONAL)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not wrk_ready():
        return 2
    # Dictionary layouts follow the hash seed: one seed for every server, so that
    # the foundation and its twin differ only by where the OS put them.
    os.environ.setdefault("PYTHONHASHSEED", "0")
    rounds, pairs, failures = run(args)
    print(render(rounds))
    if pairs:
        print()
        print(render_pairs(pairs))
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
            "paired": [
                {"target": p.target, "base": p.base, "mode": p.mode, "median_pct": p.summary()[0],
                 "base_cpu_us": p.base_cpu_us, "target_cpu_us": p.target_cpu_us}
                for p in pairs
            ],
        }  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
