"""Sluicegate with an in-process vLLM engine next to vLLM's own OpenAI server.

``python -m bench.vllm_compare [--requests 64] [--concurrency 16] [--max-tokens 32] [--stream] [--json PATH]``
(``--both`` measures non-streamed and streamed answers in one run; ``--repeat N``
(default 3) measures N passes per server start and ``--rounds N`` starts each server N
times, alternating which goes first, and the fastest pass of each is reported,
since other work on a shared host only ever slows a pass down; ``--profile DIR``
adds one pass per mode under ``py-spy record --subprocesses``, raw stacks in DIR.)

Builds the tiny Llama of ``bench.tiny_model`` in a temp directory, then serves
it twice, one server at a time (a 2-core host cannot run both fairly):

1. ``python -m vllm.entrypoints.openai.api_server`` (vLLM's own server);
2. ``python -m router serve`` with one ``provider: vllm`` deployment (the gateway
   tokenizes, authenticates and routes; vLLM's engine core runs in a child).

Both get the same engine settings (``EngineSettings``): dtype float32,
max_model_len 512, a fixed 1 GiB KV cache (``kv_cache_memory_bytes``; also
``VLLM_CPU_KVCACHE_SPACE=1``), max_num_seqs 16, enforce_eager (no torch.compile
warm-up on CPU), seed 0, vLLM's default prefix caching and engine-core process,
request logging off, no access log. Engine stats stay on in both: they are
vLLM's default, and the gateway's engine reads the scheduler's queue depth
from them (a stats hook turns them on even with ``disable_log_stats``). The
gateway runs one worker with the ledger off.

The load is identical for both: the same fixed prompts as chat completions
(temperature 0, ``max_tokens`` fixed, ``ignore_eos`` so every answer has exactly
that many tokens), sent from this process by an aiohttp client at a fixed
concurrency after a warm-up. Reported per server: requests/s and output
tokens/s over the total wall time (tokens from ``usage``), end-to-end latency
p50/p99 and, when streaming, time to the first chunk with content p50/p99;
then Sluicegate's figures as a ratio of vLLM's (throughput above 1 and latency
below 1 mean Sluicegate is faster). The random model often emits byte tokens
that decode to no text yet: vLLM's server sends an empty chunk for each, the
gateway sends none, so streams from the gateway carry fewer, fuller chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.chat_load import Row, fastest, request_body, run_load, summarize
from bench.processes import Server, free_port
from bench.tiny_model import build_tiny_llama

MODEL = "tiny"
BENCH_KEY = "sk-bench-vllm-0123456789"
TARGETS = ("vllm serve", "sluicegate")
_CHAT_PATH = "/v1/chat/completions"
_GIB = 1 << 30
# No hub access, no usage reports; the same for both servers.
_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}


@dataclass(frozen=True, slots=True)
class EngineSettings:
    dtype: str = "float32"
    max_model_len: int = 512
    kv_cache_gib: int = 1
    max_num_seqs: int = 16
    enforce_eager: bool = True
    seed: int = 0


_DEFAULT_ENGINE = EngineSettings()


def sluicegate_config(model_dir: Path, key_hash: str, engine: EngineSettings) -> str:
    """The gateway's YAML config; JSON values are valid YAML."""
    options = {
        "model_path": str(model_dir),
        "dtype": engine.dtype,
        "max_model_len": engine.max_model_len,
        "kv_cache_space_gib": engine.kv_cache_gib,
        "max_num_seqs": engine.max_num_seqs,
        "enforce_eager": engine.enforce_eager,
        "seed": engine.seed,
    }
    q = json.dumps
    return "\n".join(
        [
            "server: {log_level: warning, grace_period_s: 5}",
            "state: {ledger: 'off'}",
            "deployments:",
            "  - {name: local-vllm, provider: vllm, model: " + q(MODEL) + ", privacy: self_hosted,",
            f"     options: {q(options)}}}",
            "models:",
            f"  - {{alias: {q(MODEL)}, deployments: [local-vllm]}}",
            "tenants:",
            f"  - {{id: bench, keys: [{{id: bench-key, hash: {q(key_hash)}}}]}}",
            "",
        ]
    )


def vllm_argv(model_dir: Path, port: int, engine: EngineSettings) -> list[str]:
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port),
        "--dtype", engine.dtype, "--max-model-len", str(engine.max_model_len),
        "--kv-cache-memory-bytes", str(engine.kv_cache_gib * _GIB), "--max-num-seqs", str(engine.max_num_seqs),
        "--seed", str(engine.seed), "--disable-uvicorn-access-log",
        "--uvicorn-log-level", "warning",
    ]  # fmt: skip
    return argv + (["--enforce-eager"] if engine.enforce_eager else [])


def ratios(rows: list[Row]) -> dict[str, dict[str, float]]:
    """Per mode, Sluicegate's figure divided by vLLM's own server's."""
    by_key = {(r.target, r.mode): r for r in rows}
    out: dict[str, dict[str, float]] = {}
    for mode in ("non-stream", "stream"):
        ours, theirs = by_key.get(("sluicegate", mode)), by_key.get(("vllm serve", mode))
        if ours is None or theirs is None:
            continue
        pairs = {
            "rps": (ours.rps, theirs.rps),
            "tok_s": (ours.tok_s, theirs.tok_s),
            "ttft_p50": (ours.ttft_p50_ms, theirs.ttft_p50_ms),
            "e2e_p50": (ours.e2e_p50_ms, theirs.e2e_p50_ms),
            "e2e_p99": (ours.e2e_p99_ms, theirs.e2e_p99_ms),
        }
        out[mode] = {name: round(a / b, 3) for name, (a, b) in pairs.items() if a is not None and b}
    return out


def render(rows: list[Row]) -> str:
    def ms(value: float | None) -> str:
        return f"{value:9.1f}" if value is not None else f"{'-':>9}"

    head = f"{'target':<11} {'mode':<10} {'reqs':>5} {'err':>4} {'wall s':>7} {'req/s':>7} {'tok/s':>8}"
    lines = [head + f" {'TTFT p50':>9} {'TTFT p99':>9} {'e2e p50':>9} {'e2e p99':>9}  (ms)"]
    for r in rows:
        lines.append(
            f"{r.target:<11} {r.mode:<10} {r.requests:5d} {r.errors:4d} {r.wall_s:7.2f} {r.rps:7.2f} {r.tok_s:8.1f}"
            f" {ms(r.ttft_p50_ms)} {ms(r.ttft_p99_ms)} {ms(r.e2e_p50_ms)} {ms(r.e2e_p99_ms)}"
        )
    for mode, values in ratios(rows).items():
        lines.append(f"sluicegate / vllm serve ({mode}): " + ", ".join(f"{k} {v:.3f}x" for k, v in values.items()))
    return "\n".join(lines)


def bench_key_hash() -> str:
    # the gateway's own hashing, so the stored hash matches the key we send
    from router.auth import hash_api_key

    return hash_api_key(BENCH_KEY)


def _server(target: str, work: Path, model_dir: Path, engine: EngineSettings) -> tuple[Server, str]:
    """The server for ``target`` (not yet started) and its chat completions URL."""
    port = free_port()
    if target == "vllm serve":
        argv = vllm_argv(model_dir, port, engine)
    else:
        config = work / "sluicegate.yaml"
        config.write_text(sluicegate_config(model_dir, bench_key_hash(), engine))
        argv = [
            sys.executable, "-m", "router", "serve", "--config", str(config),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ]  # fmt: skip
    log = work / f"{target.replace(' ', '-')}.log"
    return Server(target, argv, log, work), f"http://127.0.0.1:{port}{_CHAT_PATH}"


def _start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    argv = ["py-spy", "record", "--subprocesses", "-p", str(pid), "-f", "raw", "-o", str(out)]
    profiler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the load starts
    return profiler


def _stop_profiler(profiler: subprocess.Popen[bytes]) -> None:
    # py-spy writes its output when interrupted
    profiler.send_signal(signal.SIGINT)
    try:
        profiler.wait(timeout=30)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait(timeout=10)


async def _load(target: str, url: str, args: argparse.Namespace, stream: bool, count: int) -> Row:
    bodies = [request_body(MODEL, i, args.max_tokens, stream) for i in range(count)]
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    pending = run_load(url, bodies, concurrency=args.concurrency, stream=stream, headers=headers)
    samples, wall_s = await asyncio.wait_for(pending, timeout=args.pass_timeout)
    return summarize(target, "stream" if stream else "non-stream", samples, wall_s)


async def _passes(target: str, url: str, pid: int, args: argparse.Namespace) -> list[Row]:
    """Warm up, then measure each mode --repeat times; a profiled pass last if asked."""
    rows = []
    for stream in args.modes:
        await _load(target, url, args, stream, args.warmup)
        for _ in range(args.repeat):
            row = await _load(target, url, args, stream, args.requests)
            print(f"  {target:<11} {row.mode:<10} {row.rps:7.2f} req/s", file=sys.stderr, flush=True)
            rows.append(row)
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            profiler = _start_profiler(pid, args.profile / f"{target.replace(' ', '-')}-{rows[-1].mode}.txt")
            try:
                await _load(target, url, args, stream, args.requests)
            finally:
                _stop_profiler(profiler)
    return rows


def _serve_and_measure(target: str, work: Path, model_dir: Path, args: argparse.Namespace) -> list[Row]:
    server, url = _server(target, work, model_dir, EngineSettings(max_num_seqs=args.max_num_seqs))
    ready = json.dumps(request_body(MODEL, 0, 4, stream=False)).encode()
    ready_headers = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}
    try:
        server.start()
        server.wait_ready(url, ready, ready_headers, timeout_s=args.start_timeout)
        assert server.process is not None
        return asyncio.run(_passes(target, url, server.process.pid, args))
    finally:
        server.stop()


def run(args: argparse.Namespace) -> list[Row]:
    """Each server in turn (the order alternating by round): start, measure, stop."""
    for key, value in _ENV.items():
        os.environ.setdefault(key, value)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="sluicegate-vllm-bench-") as tmp:
        work = Path(tmp)
        model_dir = build_tiny_llama(work / "tiny-llama")
        for round_index in range(args.rounds):
            for target in TARGETS if round_index % 2 == 0 else TARGETS[::-1]:
                rows += _serve_and_measure(target, work, model_dir, args)
    return fastest(rows, TARGETS)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.vllm_compare", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64, help="requests per measured pass")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--stream", action="store_true", help="stream the answers (measures TTFT)")
    parser.add_argument("--both", action="store_true", help="measure non-streamed and streamed answers")
    parser.add_argument("--warmup", type=int, default=32, help="requests sent before measuring each mode")
    parser.add_argument("--repeat", type=int, default=3, help="measured passes per mode and server start")
    parser.add_argument("--rounds", type=int, default=1, help="starts of each server, alternating which goes first")
    parser.add_argument("--max-num-seqs", type=int, default=_DEFAULT_ENGINE.max_num_seqs, help="engine batch limit")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds for a server to answer")
    parser.add_argument("--pass-timeout", type=float, default=600.0, help="seconds for one pass of requests")
    parser.add_argument("--profile", type=Path, help="after measuring, one more pass per mode under py-spy into DIR")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if min(args.requests, args.concurrency, args.max_tokens, args.repeat, args.rounds, args.max_num_seqs) < 1:
        parser.error("--requests, --concurrency, --max-tokens, --repeat, --rounds and --max-num-seqs must be positive")
    if args.max_tokens >= _DEFAULT_ENGINE.max_model_len - 64:
        parser.error(f"--max-tokens must leave room for the prompt in {_DEFAULT_ENGINE.max_model_len} tokens")
    if args.profile is not None and shutil.which("py-spy") is None:
        # checked now, not after the measured passes it would follow
        parser.error("--profile needs py-spy on PATH: `pip install py-spy` (the dev extra carries it)")
    args.modes = [False, True] if args.both else [args.stream]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    rows = run(args)
    print(render(rows))
    if args.json is not None:
        payload = {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "max_tokens": args.max_tokens,
            "engine": asdict(EngineSettings(max_num_seqs=args.max_num_seqs)),
            "results": [asdict(r) for r in rows],
            "sluicegate_over_vllm": ratios(rows),
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if any(r.errors for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
