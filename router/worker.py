"""``sluicegate worker``: the gateway without its HTTP server, for plugins' background work.

It builds and starts the same ``Gateway`` as ``serve`` (config versions and
their reloads, tenants, limits, budgets, the ledger, engines), so a model call
a plugin's worker makes goes through the whole pipeline; plugins see
``services.role == "worker"`` and may run their workers only here. With
``--metrics-port`` it serves Prometheus metrics (the gateway's and the
plugins', e.g. the orchestrator's model calls) at ``/metrics`` on that port
(bound to ``server.host``). SIGTERM or SIGINT stops it: the gateway stops as ``serve`` stops it (plugins closed,
settlements drained, the ledger flushed), then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop
from prometheus_client import start_http_server

from core.config import Config, ConfigError
from router.gateway import Gateway
from router.logs import loop_exception_handler

log = logging.getLogger("sluicegate")


async def _run(config: Config, source_path: str | None, metrics_port: int | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(loop_exception_handler)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(config, source_path=source_path, role="worker")
    if metrics_port is not None:
        start_http_server(metrics_port, addr=config.server.host, registry=gateway.metrics.registry)
    await gateway.start()
    log.info("worker started: plugins %s", ", ".join(gateway.snapshot.plugins.by_name) or "none")
    try:
        await stop.wait()
    finally:
        await gateway.stop()
    log.info("worker stopped")


def run_worker(config: Config, source_path: str | None, metrics_port: int | None = None) -> int:
    """Run until signalled (logging is set up by the caller: ``router.logs.configure``); the exit status."""
    try:
        uvloop.run(_run(config, source_path, metrics_port))
    except ConfigError as exc:
        # Written for operators, naming a key or a file, never a secret's value.
        log.critical("the worker failed: %s", exc)
        return 2
    except Exception as exc:
        # By type and stack: Python would print the message, which may quote anything.
        log.critical("the worker failed: %s", type(exc).__name__, exc_info=exc)
        return 1
    return 0
