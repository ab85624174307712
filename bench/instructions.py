"""Instructions per request for each Sluicegate target: a cost figure that does not drift.

``python -m bench.instructions [--duration 10] [--concurrency 16] [--stream]``

CPU time on a shared machine moves by more than the few percent that features
add; the count of instructions a request executes does not. Each Sluicegate
target of the overhead benchmark (``bench.overhead_targets``), and the minimal
pass-through (``bench.passthrough``), is started under
valgrind's callgrind with instrumentation off; after a warm-up, counting is
switched on (``callgrind_control``), wrk drives it for ``--duration`` seconds,
and the count is read back. The figure is instructions per request, from the
gateway process and its threads, and each target's as a percentage of the
foundation's and of the pass-through's.

It is no substitute for time: a cache miss costs no instruction, and under
valgrind the gateway runs some forty times slower, so the ledger writes
smaller batches than at full speed (which counts against the ledger). Needs
valgrind (on Debian: ``apt-get install -y valgrind``) and wrk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.overhead_targets import (
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

TARGETS = ("passthrough", "sluicegate", "sluicegate-limits", "sluicegate-budgets", "sluicegate-all")


def _total_instructions(path: Path) -> int:
    """The event total of a callgrind dump."""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no instruction total in {path}")


def measure(name: str, work: Path, upstream_url: str, args: argparse.Namespace) -> float:
    """Instructions per request of one target."""
    port = free_port()
    if name == "passthrough":
        served = [sys.executable, "-m", "bench.passthrough", "--upstream", upstream_url, "--port", str(port)]
    else:
        config = work / f"{name}.yaml"
        config.write_text(sluicegate_config(upstream_url, bench_key_hash(), FEATURES[name]))
        served = serve_argv(config, port)
    out = work / f"{name}.callgrind"
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *served]
    server = Server(LABELS[name], argv, work / f"{name}.log", work)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body, headers = request_body(args.stream), request_headers(name)
    server.start()
    try:
        server.wait_ready(url, body, headers, timeout_s=300)
        run_wrk(url, body, headers, duration_s=3, concurrency=args.concurrency)
        assert server.process is not None
        pid = str(server.process.pid)
        for step in (["-i", "on"], ["-z"]):  # count from here, from zero
            subprocess.run(["callgrind_control", *step, pid], check=True, capture_output=True)
        result = run_wrk(url, body, headers, duration_s=args.duration, concurrency=args.concurrency)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
    finally:
        server.stop()
    dumps = sorted(work.glob(f"{name}.callgrind.*"))
    if not dumps or not result.requests:
        raise RuntimeError(f"{LABELS[name]}: no dump or no requests; log:\n{server.log_tail()}")
    return _total_instructions(dumps[-1]) / result.requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of counted load per target")
    parser.add_argument("--concurrency", type=int, default=16, help="open connections")
    parser.add_argument("--stream", action="store_true", help="streamed chat completions (20 chunks)")
    args = parser.parse_args(argv)
    if not wrk_ready():
        return 2
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("error: valgrind is not installed; on Debian: apt-get install -y valgrind", file=sys.stderr)
        return 2
    # Dictionary layouts follow the hash seed: fixed, so that runs count alike.
    os.environ["PYTHONHASHSEED"] = "0"
    with tempfile.TemporaryDirectory(prefix="sluicegate-instr-") as tmp:
        work = Path(tmp)
        upstream_port = free_port()
        upstream = fake_upstream(work, upstream_port)
        upstream.start()
        try:
            upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
            upstream.wait_ready(f"{upstream_url}/chat/completions", request_body(False), request_headers("upstream"))
            counts = {}
            for name in TARGETS:
                counts[name] = measure(name, work, upstream_url, args)
                print(f"  {LABELS[name]:<18} {counts[name]:12,.0f} instructions/req", file=sys.stderr, flush=True)
        finally:
            upstream.stop()
    mode = "stream" if args.stream else "non-stream"
    print(f"{'target':<18} {'mode':<10} {'instructions/req':>17} {'% of sluicegate':>16} {'% of passthrough':>17}")
    for name, count in counts.items():
        base, floor = 100 * count / counts["sluicegate"], 100 * count / counts["passthrough"]
        print(f"{LABELS[name]:<18} {mode:<10} {count:17,.0f} {base:15.1f}% {floor:16.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
