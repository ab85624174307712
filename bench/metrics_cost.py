"""What recording a request's metrics costs, in one process and in a worker of several.

``python -m bench.metrics_cost [--requests 20000] [--passes 5]``

Each case runs in a process of its own, since prometheus_client picks its
multiprocess mode when it is first imported: ``one process`` without
``PROMETHEUS_MULTIPROC_DIR``, ``worker of several`` with it set, as
``sluicegate serve --workers N`` runs each worker. Both record what the
pipeline records once a request is answered and once it is settled
(``Metrics.finished`` and ``Metrics.settled``) for a served chat request with
usage and a time to first token, ``--requests`` times a pass; printed: the
best pass's microseconds a request, and for the worker how long one copy of
its figures and counts into its files takes (``LiveFigures.refresh``, once a
second; the counts since ``router.metrics_mirror``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.processes import REPO_ROOT


def _measure(requests: int, passes: int) -> str:
    """In this process: the line the parent prints."""
    from bench.overhead_targets import bench_key_hash, sluicegate_config
    from core.config_check import load_config
    from core.principal import Principal
    from router.context import RequestContext
    from router.gateway import Gateway
    from router.metrics import Metrics
    from serving.base import Usage

    with tempfile.TemporaryDirectory(prefix="sluicegate-metrics-cost-") as tmp:
        path = Path(tmp) / "gateway.yaml"
        path.write_text(sluicegate_config("http://127.0.0.1:9/v1", bench_key_hash(), "plain"))
        gateway = Gateway(load_config(path))
    snapshot = gateway.snapshot
    deployment = snapshot.router.get("fake-model").tiers[0][0]
    ctx = RequestContext(
        request_id="r", snapshot=snapshot, principal=Principal(tenant="bench", key_id="bench-key"),
        kind="chat", route="chat", alias="fake-model", body={},
    )  # fmt: skip
    for name, value in {
        "plan": [deployment], "served": deployment, "deployment": deployment.name, "attempted": True,
        "usage": Usage(prompt_tokens=12, completion_tokens=34, total_tokens=46), "elapsed": 0.0123, "ttft": 0.004, "cost": 123_456,
    }.items():  # fmt: skip
        setattr(ctx, name, value)
    metrics = Metrics()
    metrics.finished(ctx)
    metrics.settled(ctx)
    best = float("inf")
    for _ in range(passes):
        began = time.perf_counter()
        for _ in range(requests):
            metrics.finished(ctx)
            metrics.settled(ctx)
        best = min(best, (time.perf_counter() - began) / requests)
    line = f"{best * 1e6:8.2f} us a request"
    if metrics.multiproc_dir is not None:
        metrics.live.refresh()  # the first copy makes the files' entries
        metrics.finished(ctx)
        metrics.settled(ctx)
        began = time.perf_counter()
        metrics.live.refresh()
        line += f"; a copy into the files after one more request {(time.perf_counter() - began) * 1e6:.0f} us"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(_measure(args.requests, args.passes), flush=True)
        return 0
    for label, workers in (("one process", False), ("worker of several", True)):
        with tempfile.TemporaryDirectory(prefix="sluicegate-multiproc-") as directory:
            env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
            if workers:
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            command = [sys.executable, "-m", "bench.metrics_cost", "--child", "--requests", str(args.requests)]
            command += ["--passes", str(args.passes)]
            done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            print(f"{label}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        print(f"{label:<18} {done.stdout.strip()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
