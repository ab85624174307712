"""Where a gateway request's time goes: a py-spy profile of one target under wrk load, summarised.

``python -m bench.profile [--target sluicegate|sluicegate-all|...] [--stream] [--duration 20] [--out DIR]``

Starts the fake upstream and one Sluicegate target of the overhead benchmark
(``bench.overhead_targets``), warms it up, then drives it with wrk while
py-spy samples the gateway process (``--nonblocking``, 250 Hz, idle frames
left out). Writes the flame graph (``profile.svg``) and the collapsed stacks
(``profile.txt``) to ``--out`` and prints the frames with the most samples:
own (the frame itself running) and total (the frame or anything it called),
as shares of all samples, so that the next change to the hot path has a
baseline to compare against. Needs py-spy (``pip install py-spy``) and wrk.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from bench.overhead_targets import FEATURES, LABELS, bench_key_hash, request_body, request_headers, serve_argv, sluicegate_config
from bench.processes import Server, fake_upstream, free_port
from bench.wrk import run_wrk, wrk_ready


def summarise(collapsed: Path, top: int) -> list[str]:
    """The ``top`` frames by own and by total samples, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [_short(frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return ["no samples"]
    lines = [f"{samples} samples", f"{'own %':>7}  frame"]
    lines += [f"{100 * n / samples:7.1f}  {frame}" for frame, n in own.most_common(top)]
    lines += [f"{'total %':>7}  frame"]
    lines += [f"{100 * n / samples:7.1f}  {frame}" for frame, n in total.most_common(top)]
    return lines


def _short(frame: str) -> str:
    """``function (path/to/module.py:line)`` as ``function (module.py)``: one entry per function, not per line."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{name} ({short})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="sluicegate", choices=sorted(FEATURES))
    parser.add_argument("--stream", action="store_true", help="streamed chat completions (20 chunks)")
    parser.add_argument("--duration", type=int, default=20, help="seconds of sampled load")
    parser.add_argument("--concurrency", type=int, default=32, help="open connections")
    parser.add_argument("--top", type=int, default=25, help="frames to print")
    parser.add_argument("--out", type=Path, default=Path("bench-profile"), help="folder for the flame graph and stacks")
    args = parser.parse_args(argv)
    if not wrk_ready():
        return 2
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("error: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    mode = "stream" if args.stream else "non-stream"
    svg, collapsed = args.out / f"{args.target}-{mode}.svg", args.out / f"{args.target}-{mode}.txt"
    with tempfile.TemporaryDirectory(prefix="sluicegate-profile-") as tmp:
        work = Path(tmp)
        upstream_port, port = free_port(), free_port()
        upstream = fake_upstream(work, upstream_port)
        config = work / "gateway.yaml"
        upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
        config.write_text(sluicegate_config(upstream_url, bench_key_hash(), FEATURES[args.target]))
        gateway = Server(LABELS[args.target], serve_argv(config, port), work / "gateway.log", work)
        upstream.start()
        gateway.start()
        try:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            body, headers = request_body(args.stream), request_headers(args.target)
            gateway.wait_ready(url, body, headers, timeout_s=120)
            run_wrk(url, body, headers, duration_s=3, concurrency=args.concurrency)
            assert gateway.process is not None
            pid = str(gateway.process.pid)
            record = [py_spy, "record", "--pid", pid, "--rate", "250", "--nonblocking", "--duration", str(args.duration)]
            sampled: dict[str, subprocess.CompletedProcess[bytes]] = {}

            def sample(kind: str, path: Path) -> None:
                sampled[kind] = subprocess.run([*record, "--format", kind, "--output", str(path)], capture_output=True, check=False)

            threads = [threading.Thread(target=sample, args=pair) for pair in (("flamegraph", svg), ("raw", collapsed))]
            for thread in threads:
                thread.start()
            result = run_wrk(url, body, headers, duration_s=args.duration + 1, concurrency=args.concurrency)
            for thread in threads:
                thread.join()
        finally:
            gateway.stop()
            upstream.stop()
    failed = [kind for kind, done in sampled.items() if done.returncode != 0]
    if failed:
        print(f"error: py-spy failed: {sampled[failed[0]].stderr.decode(errors='replace')[-500:]}", file=sys.stderr)
        return 1
    print(f"{LABELS[args.target]} {mode}: {result.rps:.0f} req/s under profiling; flame graph {svg}")
    print("\n".join(summarise(collapsed, args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
