"""Added latency at a fixed request rate: the gateway's p99 less the upstream's, at half the gateway's maximum.

``python -m bench.fixed_rate [--target sluicegate-all] [--fraction 0.5 | --rate R] [--duration 10] [--rounds 3] [--stream]
[--client c|python] [--passthrough] [--nginx] [--halt-poll-ns N]``

Starts the fake upstream and one Sluicegate target of the overhead benchmark
(``bench.overhead_targets``; default the full pipeline: limits, budgets and
the SQLite ledger), the gateway pinned to its own CPU and everything else to
the other, as ``bench.overhead`` places them. First it measures the target's
maximum with wrk (``-c32``), and its CPU a request there; then, round after
round, it offers ``--fraction`` of that rate, open loop, to the upstream
directly and to the gateway in turn (which goes first alternates), and
prints p50, p90, p99 and max latency of
each and what the gateway adds to each (gateway less direct, same round),
with each hop's own CPU time per request during its run (``CPU us``, all its
threads, from ``/proc``) and the share of its core that was (``busy %``: how
long requests queue behind each other follows from it; the summary gives its
range) and, for Sluicegate, what it says it added itself
(``own p99``: the bucket of ``sluicegate_overhead_seconds``, read from its
``/metrics`` before and after the run, that holds the 99th percentile; the
time a request spends in the gateway outside the upstream call, as
operators see it in production) and how long its event loop kept an
arriving event waiting (``loop p99``: the same reading of
``sluicegate_event_loop_lag_seconds``, sampled a hundred times a second here:
the wait before the gateway reads a request). The summary gives the target's
median CPU a request at the offered rate as a multiple of its CPU a request
under wrk: above 1, half the maximum keeps its core more than half busy.
What the client measures on top of those is the rest of the way in and out:
the kernel, and the wake-ups of each CPU on the way.

Open loop: request *i* is due at ``start + i / rate`` whether or not earlier
ones have been answered, and its latency is counted from when it was due, not
from when it went out, so a stall is charged to every request it delays
(no coordinated omission).

The client (``--client c``, the default) is a small C program,
``bench/openloop.c``, run through ``bench.openloop``: it opens 256 keep-alive
connections before the first due time, sleeps on a timer armed at each due
time, sends a pre-built request on an idle connection (or, if none is idle,
on the next to free up, still timed from the due time), and reads each
response just far enough to find its end. It is written in C because the
client shares a CPU with the Python fake upstream: a Python client there costs
that CPU far more per request, falls milliseconds behind schedule when the
upstream is busy and then sends the overdue requests in a burst, and its
delays and bursts end up in the tails it measures. The client's own worst
lateness is the ``late ms`` column; for the C client it is mostly how late
the machine's timer wake-ups come. ``--client python`` runs the earlier
client in this process instead (uvloop, the gateway's own keep-alive client
``serving.h1``, up to 512 connections). Either client runs on the CPU this process pins
itself to (the C client inherits the pinning); its cost is in both figures
alike, and cancels out of the difference.

``--passthrough`` also runs the minimal pass-through (``bench.passthrough``)
at the same rate in every round, on the gateway's CPU: what a bare Python hop
adds on the same machine at the same moment. At half the gateway's maximum it
may be past the pass-through's own (then ``--rate`` gives a rate both take).

``--nginx`` also runs nginx (from ``PATH``; on Debian ``apt-get install -y
nginx-light``) as a reverse proxy to the same upstream, one worker process
with a pool of keep-alive connections, on the gateway's CPU, at the same rate
in every round: a hop written in C that does no work of its own, so what it
adds is what any hop adds on this machine at that moment (the wake-ups of
another CPU on the way in and out), the floor under any gateway's figure.
Each round then also prints each other hop's p99 less nginx's (``beyond
nginx``), and the summary its median: what the hop adds over a hop that does
nothing, taken at the same moment, so that a host whose own noise moves
from round to round shows apart from the hop's own cost.

On a virtual machine a CPU that goes idle halts, and waking it is a trip
through the host: at a fixed rate a hop pays that on every request (the
gateway's CPU time per request here is well above what it is under wrk's
saturating load, so half the maximum keeps it busier than half the time), and
now and then the host is milliseconds late. Linux guests can poll briefly
before halting (the cpuidle-haltpoll driver; the kernel's default is
200,000 ns, and some VMs set 0). ``--halt-poll-ns N`` sets it for the run and
restores it afterwards (root only), so that a run can show what the gateway
adds apart from what the machine adds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import uvloop

from bench.openloop import Run, openloop_ready, run_openloop
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
from bench.processes import Server, fake_upstream, free_port, placement
from bench.wrk import run_wrk, wrk_ready
from serving.h1 import H1Error, H1Pool


async def open_loop(url: str, body: bytes, headers: dict[str, str], *, rate: float, duration_s: float, stream: bool) -> Run:
    """Offer ``rate`` requests a second for ``duration_s``, each timed from when it was due."""
    pool = H1Pool(url, limit=512, connect_s=5.0, read_s=30.0, total_s=60.0)
    head = pool.head(b"POST", CHAT_PATH, {k.lower(): v for k, v in headers.items()})
    loop = asyncio.get_running_loop()
    now = time.perf_counter  # loop.time() is uvloop's millisecond clock: too coarse here
    latencies: list[float] = []
    errors = 0
    late = 0.0

    async def one(due: float) -> None:
        nonlocal errors
        try:
            response = await pool.request(head, body)
            if stream:
                async for _ in response.chunks():
                    pass
            else:
                await response.read()
        except (H1Error, TimeoutError):
            errors += 1
            return
        if response.status != 200:
            errors += 1
            return
        latencies.append((now() - due) * 1000)

    # Warm the pool's connections so that connecting is not part of the first second's latency.
    await asyncio.gather(*(one(now()) for _ in range(min(64, int(rate // 10) + 1))))
    latencies.clear()
    total = int(rate * duration_s)
    start = now() + 0.05
    tasks: set[asyncio.Task[None]] = set()
    for i in range(total):
        due = start + i / rate
        wait = due - now()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            late = max(late, -wait)
        task = loop.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    await pool.close()
    return Run(latencies, errors, late * 1000)


def histogram_counts(text: str, name: str, matcher: str = "") -> dict[float, float]:
    """Cumulative counts of histogram ``name`` by upper bound (seconds), from an exposition ``text``; only the
    series whose labels hold ``matcher`` (as ``mode="unary"``), if given."""
    counts: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{") and matcher in line:
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            counts[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return counts


def gateway_counts(base_url: str, mode: str) -> tuple[dict[float, float], dict[float, float]]:
    """From the gateway's ``/metrics``: ``sluicegate_overhead_seconds`` for ``mode`` (unary or stream), and
    ``sluicegate_event_loop_lag_seconds``."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    own = histogram_counts(text, "sluicegate_overhead_seconds", f'mode="{mode}"')
    return own, histogram_counts(text, "sluicegate_event_loop_lag_seconds")


def bucket_p99(before: dict[float, float], after: dict[float, float]) -> str:
    """The upper bound (ms) of the bucket that holds the 99th percentile of what was observed between two readings."""
    delta = {bound: after.get(bound, 0.0) - before.get(bound, 0.0) for bound in sorted(after)}
    total = delta.get(float("inf"), 0.0)
    if total <= 0:
        return "-"
    for bound, count in delta.items():
        if count >= 0.99 * total:
            return f"<={bound * 1000:g}" if bound != float("inf") else ">max"
    return ">max"


def cpu_against_wrk(open_loop_us: list[float], wrk_us: float) -> str:
    """The gateway's median CPU a request at the offered rate as a multiple of its CPU a request under wrk: at a
    fixed rate a request costs more than when wrk keeps the same code running back to back, and so half of wrk's
    maximum keeps the core more than half busy. Empty when either is unknown."""
    if not open_loop_us or not wrk_us > 0:
        return ""
    median = statistics.median(open_loop_us)
    return f"; CPU a request {median:.0f} us, {median / wrk_us:.2f}x its {wrk_us:.0f} us under wrk"


LOOP_LAG_INTERVAL_S = 0.01

# How long an idle vCPU polls before it halts, in a Linux guest with the cpuidle-haltpoll driver.
HALT_POLL_NS = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


def nginx_config(work: Path, port: int, upstream_port: int) -> Path:
    """nginx as a bare reverse proxy: one process in the foreground, keep-alive both ways, nothing logged per request."""
    path = work / "nginx.conf"
    path.write_text(
        f"""daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    upstream fake {{ server 127.0.0.1:{upstream_port}; keepalive 512; keepalive_requests 1000000; keepalive_timeout 600s; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""
    )
    return path


def _row(label: str, run: Run) -> str:
    return (
        f"{label:<18} {len(run.latencies):>8} {run.errors:>6} {run.pct(0.5):>8.2f} {run.pct(0.9):>8.2f} "
        f"{run.pct(0.99):>8.2f} {max(run.latencies, default=float('nan')):>8.2f} {run.late_ms:>8.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fixed_rate", description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="sluicegate-all", choices=sorted(FEATURES))
    parser.add_argument("--fraction", type=float, default=0.5, help="share of the measured maximum to offer")
    parser.add_argument("--rate", type=float, help="offer this many requests a second instead (skips the maximum)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per open-loop run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stream", action="store_true", help="streamed chat completions (20 chunks)")
    parser.add_argument("--client", choices=("c", "python"), default="c", help="the open-loop client: bench/openloop.c, or this process")
    parser.add_argument("--passthrough", action="store_true", help="also measure the minimal pass-through at the same rate, every round")
    parser.add_argument("--nginx", action="store_true", help="also measure nginx as a bare reverse proxy at the same rate, every round")
    parser.add_argument(
        "--halt-poll-ns", type=int, help="a Linux guest's idle halt polling for the run (cpuidle-haltpoll; root); restored afterwards"
    )
    args = parser.parse_args(argv)
    if not wrk_ready() or (args.client == "c" and not openloop_ready()):
        return 2
    if args.nginx and shutil.which("nginx") is None:
        print("error: --nginx needs nginx on PATH (on Debian: apt-get install -y nginx-light)", file=sys.stderr)
        return 2
    if args.halt_poll_ns is None:
        return _measure(args)
    try:
        previous = HALT_POLL_NS.read_text().strip()
        HALT_POLL_NS.write_text(str(args.halt_poll_ns))
    except OSError as exc:
        print(f"error: cannot set {HALT_POLL_NS} ({type(exc).__name__}): needs root and the cpuidle-haltpoll driver", file=sys.stderr)
        return 2
    print(f"guest halt polling: {args.halt_poll_ns} ns for this run (was {previous})", flush=True)
    try:
        return _measure(args)
    finally:
        HALT_POLL_NS.write_text(previous)


def _measure(args: argparse.Namespace) -> int:
    os.environ.setdefault("PYTHONHASHSEED", "0")
    body, mode = request_body(args.stream), "stream" if args.stream else "non-stream"
    with tempfile.TemporaryDirectory(prefix="sluicegate-fixed-") as tmp:
        work = Path(tmp)
        up_port, gw_port, pt_port, ng_port = free_port(), free_port(), free_port(), free_port()
        upstream = fake_upstream(work, up_port)
        config = work / "gateway.yaml"
        # The loop's lag sampled a hundred times a second: enough samples in one run for its 99th percentile.
        config.write_text(sluicegate_config(f"http://127.0.0.1:{up_port}/v1", bench_key_hash(), FEATURES[args.target], LOOP_LAG_INTERVAL_S))
        gateway = Server(LABELS[args.target], serve_argv(config, gw_port), work / "gateway.log", work)
        direct_url, gw_url = f"http://127.0.0.1:{up_port}{CHAT_PATH}", f"http://127.0.0.1:{gw_port}{CHAT_PATH}"
        # (label, url, target name) of each hop measured against the upstream, every round
        hops = [(LABELS[args.target], gw_url, args.target)]
        servers = [gateway]
        if args.passthrough:
            argv_pt = [sys.executable, "-m", "bench.passthrough", "--upstream", f"http://127.0.0.1:{up_port}", "--port", str(pt_port)]
            servers.append(Server(LABELS["passthrough"], argv_pt, work / "passthrough.log", work))
            hops.append((LABELS["passthrough"], f"http://127.0.0.1:{pt_port}{CHAT_PATH}", "passthrough"))
        if args.nginx:
            conf = nginx_config(work, ng_port, up_port)
            argv_ng = [shutil.which("nginx") or "nginx", "-c", str(conf), "-p", str(work), "-e", str(work / "nginx-error.log")]
            servers.append(Server("nginx", argv_ng, work / "nginx.log", work))
            hops.append(("nginx", f"http://127.0.0.1:{ng_port}{CHAT_PATH}", "nginx"))
        try:
            upstream.start()
            upstream.wait_ready(direct_url, body, request_headers("upstream"))
            for server, (_, url, name) in zip(servers, hops, strict=True):
                server.start()
                server.wait_ready(url, body, request_headers(name))
            cores = placement()
            if cores is not None:
                upstream.pin(cores[0])
                for server in servers:  # one at a time is driven: each has the core to itself
                    server.pin(cores[1])
                os.sched_setaffinity(0, cores[0])
            shared = cores[0] if cores else None
            wrk_cpu_us = float("nan")  # the gateway's CPU a request under wrk, when its maximum is measured
            if args.rate:
                rate = args.rate
                print(f"{LABELS[args.target]} {mode}: offering {rate:,.0f} req/s", flush=True)
            else:
                run_wrk(gw_url, body, request_headers(args.target), duration_s=2, concurrency=32, cpus=shared)
                cpu_before = gateway.cpu_seconds()
                peak = run_wrk(gw_url, body, request_headers(args.target), duration_s=args.duration, concurrency=32, cpus=shared)
                if peak.requests:
                    wrk_cpu_us = (gateway.cpu_seconds() - cpu_before) * 1e6 / peak.requests
                rate = peak.rps * args.fraction
                print(
                    f"{LABELS[args.target]} {mode}: maximum {peak.rps:,.0f} req/s (wrk -c32, {wrk_cpu_us:.0f} us of CPU a request); "
                    f"offering {rate:,.0f} req/s",
                    flush=True,
                )
            server_of = {name: server for server, (_, _, name) in zip(servers, hops, strict=True)}
            added50: dict[str, list[float]] = {name: [] for _, _, name in hops}
            added99: dict[str, list[float]] = {name: [] for _, _, name in hops}
            beyond: dict[str, list[float]] = {name: [] for _, _, name in hops}  # p99 less nginx's, with --nginx
            busy: dict[str, list[float]] = {name: [] for _, _, name in hops}
            cpu_us: dict[str, list[float]] = {name: [] for _, _, name in hops}  # CPU a request, each round
            heads = ("answered", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms", "late ms", "CPU us", "busy %", "own p99", "loop p99")
            print(f"{'round/target':<18} " + " ".join(f"{h:>{6 if h == 'errors' else 8}}" for h in heads))
            for number in range(args.rounds):
                order = [("upstream direct", direct_url, "upstream"), *hops]
                shift = number % len(order)  # each round starts one target further on
                order = order[shift:] + order[:shift]
                runs = {}
                for label, url, name in order:
                    hop = server_of.get(name)  # None: the upstream, driven directly
                    cpu_before = hop.cpu_seconds() if hop is not None else 0.0
                    base = url.removesuffix(CHAT_PATH)
                    own_mode = "stream" if args.stream else "unary"
                    own_before = gateway_counts(base, own_mode) if name.startswith("sluicegate") else None
                    if args.client == "c":
                        runs[name] = run_openloop(url, body, request_headers(name), rate=rate, duration_s=args.duration)
                    else:
                        runs[name] = uvloop.run(
                            open_loop(url, body, request_headers(name), rate=rate, duration_s=args.duration, stream=args.stream)
                        )
                    extra = ""
                    if hop is not None and runs[name].latencies:
                        used = hop.cpu_seconds() - cpu_before
                        # busy: the share of its core the hop used over the run, which sets how long requests queue
                        busy[name].append(100 * used / args.duration)
                        cpu_us[name].append(used * 1e6 / len(runs[name].latencies))
                        extra = f" {cpu_us[name][-1]:>8.0f} {busy[name][-1]:>8.0f}"
                    if own_before is not None:
                        own_after = gateway_counts(base, own_mode)
                        extra += f" {bucket_p99(own_before[0], own_after[0]):>8} {bucket_p99(own_before[1], own_after[1]):>8}"
                    print(_row(f"{number + 1}: {label}", runs[name]) + extra, flush=True)
                direct = runs["upstream"]
                for label, _, name in hops:
                    added50[name].append(runs[name].pct(0.5) - direct.pct(0.5))
                    added99[name].append(runs[name].pct(0.99) - direct.pct(0.99))
                    print(f"{number + 1}: added by {label}: p50 {added50[name][-1]:+.2f} ms, p99 {added99[name][-1]:+.2f} ms", flush=True)
                if "nginx" in runs:  # what each Python hop adds beyond a C hop that does nothing, at the same moment
                    for label, _, name in hops:
                        if name != "nginx":
                            beyond[name].append(runs[name].pct(0.99) - runs["nginx"].pct(0.99))
                            print(f"{number + 1}: {label} beyond nginx: p99 {beyond[name][-1]:+.2f} ms", flush=True)
            for label, _, name in hops:
                a99, a50 = added99[name], added50[name]
                print(
                    f"{label}: added p99 at {rate:,.0f} req/s ({mode}): median {statistics.median(a99):+.2f} ms "
                    f"[{min(a99):+.2f} to {max(a99):+.2f}] over {args.rounds} rounds; "
                    f"added p50 median {statistics.median(a50):+.2f} ms"
                    + (f"; its core {min(busy[name]):.0f} to {max(busy[name]):.0f}% busy" if busy[name] else "")
                    + (cpu_against_wrk(cpu_us[name], wrk_cpu_us) if name == args.target else "")
                    + (
                        f"; beyond nginx: p99 median {statistics.median(beyond[name]):+.2f} ms "
                        f"[{min(beyond[name]):+.2f} to {max(beyond[name]):+.2f}]"
                        if beyond[name]
                        else ""
                    )
                )
        finally:
            for server in servers:
                server.stop()
            upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
