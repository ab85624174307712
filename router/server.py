"""Running the app under uvicorn (uvloop + httptools) with graceful shutdown.

On SIGTERM uvicorn stops accepting connections and lets in-flight requests and
streams finish; then the gateway stops (the ledger drains) and the process
exits 0, all within ``server.grace_period_s`` (``router.state.shutdown_budget``).
"""

from __future__ import annotations

import os
import signal
import sys

import uvicorn

from core.config import Config
from router.app import CONFIG_ENV
from router.http_protocol import JsonErrorHttpProtocol
from router.logs import log_config
from router.state import shutdown_budget
from router.ui.session_secret import share_secret

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def serve(config: Config, config_path: str | None) -> None:
    server = config.server
    if config_path is not None:
        os.environ[CONFIG_ENV] = os.path.abspath(config_path)
    else:
        os.environ.pop(CONFIG_ENV, None)
    # Every worker signs console sessions with the same secret (router.ui.session_secret).
    share_secret(config)
    if server.workers > 1 and not os.environ.get(_MULTIPROC_ENV):
        import tempfile

        # Prometheus needs a shared directory to add up several workers' metrics.
        os.environ[_MULTIPROC_ENV] = tempfile.mkdtemp(prefix="sluicegate-metrics-")
    # uvicorn drains on SIGTERM and then re-raises it with the previous handler
    # in place; this handler turns that into the clean exit 0 a drain deserves.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    in_flight_s, _ = shutdown_budget(config)
    uvicorn.run(
        "router.app:app_from_env",
        factory=True,
        host=server.host,
        port=server.port,
        workers=server.workers,
        loop="uvloop",
        http=JsonErrorHttpProtocol,
        lifespan="on",
        access_log=False,
        log_level=server.log_level,
        log_config=log_config(server.log_level, server.access_log),
        # Typed int, but applied with asyncio.timeout, which takes any number of seconds.
        timeout_graceful_shutdown=in_flight_s,  # type: ignore[arg-type]
        timeout_keep_alive=30,
        server_header=False,
        proxy_headers=False,
    )
    sys.exit(0)
