"""What tracing costs a request: the full pipeline with tracing off, and on at two sample ratios.

``python -m bench.tracing_cost [--ratios 1.0,0.1] [--duration 5] [--rounds 3] [--concurrency 32] [--stream]``

Starts the fake upstream, an OTLP/HTTP sink (a thread of this process that
reads each export and answers 200, as a collector would) and one gateway per
setting: the full pipeline of the overhead benchmark (``sluicegate-all``),
tracing off, then on with ``telemetry.sample_ratio`` set to each of
``--ratios`` (the OTLP exporter, its batch processor and its HTTP client, as
in production). With two CPUs or more each gateway is pinned to a core of its
own while wrk, the upstream and the sink share another. Round after round
each gateway is driven by wrk; printed: the medians of req/s and of the
gateway's CPU time a request (all its threads, the exporter's included, from
``/proc``), that CPU against tracing off, and the spans the sink received a
request, which shows what was traced.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.overhead_targets import CHAT_PATH, FEATURES, bench_key_hash, request_body, request_headers, serve_argv, sluicegate_config
from bench.processes import Server, fake_upstream, free_port, placement
from bench.wrk import run_wrk, wrk_ready

TARGET = "sluicegate-all"


class _Sink(BaseHTTPRequestHandler):
    """OTLP/HTTP traces: reads the body, counts the spans, answers 200 with an empty response."""

    protocol_version = "HTTP/1.1"
    spans = 0
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        request = ExportTraceServiceRequest.FromString(body)
        count = sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
        with _Sink.lock:
            _Sink.spans += count
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        return


def telemetry(sink_port: int, ratio: float | None) -> str:
    """The config's ``telemetry`` block: tracing off (``None``), or on at ``ratio`` exporting to the sink."""
    if ratio is None:
        return "telemetry: {tracing: false}\n"
    endpoint = f"http://127.0.0.1:{sink_port}/v1/traces"
    return f"telemetry: {{tracing: true, exporter: otlp, otlp_endpoint: '{endpoint}', sample_ratio: {ratio}}}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="1.0,0.1", help="comma-separated sample ratios to trace at")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--stream", action="store_true", help="streamed chat completions (20 chunks)")
    args = parser.parse_args(argv)
    if not wrk_ready():
        return 2
    settings: list[tuple[str, float | None]] = [("off", None)] + [(f"on, ratio {float(r):g}", float(r)) for r in args.ratios.split(",")]
    os.environ.setdefault("PYTHONHASHSEED", "0")
    body, headers = request_body(args.stream), request_headers(TARGET)
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, name="otlp-sink", daemon=True).start()
    figures: dict[str, list[tuple[float, float, float]]] = {label: [] for label, _ in settings}  # req/s, CPU us, spans a request
    with tempfile.TemporaryDirectory(prefix="sluicegate-tracing-") as tmp:
        work = Path(tmp)
        up_port = free_port()
        upstream = fake_upstream(work, up_port)
        gateways: list[tuple[str, Server, str]] = []
        try:
            upstream.start()
            upstream.wait_ready(f"http://127.0.0.1:{up_port}{CHAT_PATH}", request_body(False), request_headers("upstream"))
            for number, (label, ratio) in enumerate(settings):
                port, folder = free_port(), work / f"gateway-{number}"
                folder.mkdir()
                config = folder / "gateway.yaml"
                config.write_text(
                    sluicegate_config(f"http://127.0.0.1:{up_port}/v1", bench_key_hash(), FEATURES[TARGET])
                    + telemetry(sink.server_address[1], ratio)
                )
                gateway = Server(label, serve_argv(config, port), folder / "gateway.log", folder)
                url = f"http://127.0.0.1:{port}{CHAT_PATH}"
                gateway.start()
                gateway.wait_ready(url, body, headers, timeout_s=60)
                gateways.append((label, gateway, url))
            cores = placement()
            shared = cores[0] if cores is not None else None
            if cores is not None:
                upstream.pin(cores[0])
                for _, gateway, _ in gateways:
                    gateway.pin(cores[1])
                os.sched_setaffinity(0, cores[0])  # wrk and the sink's thread
            for number in range(args.rounds):
                shift = number % len(gateways)
                for label, gateway, url in gateways[shift:] + gateways[:shift]:
                    run_wrk(url, body, headers, duration_s=1, concurrency=args.concurrency, cpus=shared)
                    cpu, spans = gateway.cpu_seconds(), _Sink.spans
                    result = run_wrk(url, body, headers, duration_s=args.duration, concurrency=args.concurrency, cpus=shared)
                    used = gateway.cpu_seconds() - cpu
                    # The exporter sends its batch within seconds: what arrived meanwhile stands for this run's spans.
                    served = max(result.requests, 1)
                    figures[label].append((result.rps, used * 1e6 / served, (_Sink.spans - spans) / served))
                    print(f"  round {number + 1}: {label:<16} {result.rps:9.1f} req/s", file=sys.stderr, flush=True)
        finally:
            for _, gateway, _ in gateways:
                gateway.stop()
            upstream.stop()
            sink.shutdown()
    mode = "stream" if args.stream else "non-stream"
    print(f"sg+all {mode}, wrk -c{args.concurrency}, medians of {args.rounds} rounds; OTLP/HTTP to a local sink")
    print(f"{'tracing':<16} {'req/s':>9} {'CPU us':>8} {'vs off':>8} {'spans/req':>10}")
    base = statistics.median(f[1] for f in figures["off"])
    for label, _ in settings:
        rows = figures[label]
        cpu = statistics.median(r[1] for r in rows)
        print(
            f"{label:<16} {statistics.median(r[0] for r in rows):9.1f} {cpu:8.1f} {cpu / base:7.2f}x "
            f"{statistics.median(r[2] for r in rows):10.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
