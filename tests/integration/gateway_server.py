"""Run the real app under uvicorn inside the test's event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn

from core.config import Config
from router.app import create_app
from router.gateway import Gateway


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def running_gateway(config: Config, gateway: Gateway | None = None) -> AsyncIterator[tuple[str, Gateway]]:
    gateway = gateway if gateway is not None else Gateway(config)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(config, gateway), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", gateway
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def wait_healthy(base: str, timeout_s: float = 15.0) -> None:
    """Poll a gateway started as a subprocess until /healthz answers (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with aiohttp.ClientSession() as http:
        while asyncio.get_running_loop().time() < deadline:
            try:
                async with http.get(f"{base}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{base} did not start")
