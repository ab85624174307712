"""End-to-end fixtures: the fake upstream and the gateway as real subprocesses.

Everything talks over loopback TCP exactly as a client would; nothing is
imported into the test process except the key-hashing helper.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest

from router.auth import hash_api_key

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# Longer than router.log_writer's interval between writes (50 ms).
LOG_SETTLE_S = 0.2
# Distinctive so a leak into the logs cannot be a coincidence.
API_KEY = "sk-e2e-" + secrets.token_hex(16)
UPSTREAM_KEY = "sk-upstream-" + secrets.token_hex(16)
UPSTREAM_KEY_ENV = "SLUICEGATE_E2E_UPSTREAM_KEY"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    """A subprocess whose stdout and stderr go to ``log``."""

    popen: subprocess.Popen[bytes]
    log: Path
    url: str

    def output(self) -> str:
        """What it has written so far. The gateway's log lines go out from a thread of their own up to 50 ms after
        they are logged (``router.log_writer``): a little longer is waited first, so that a check that a secret is
        *not* in the output sees every line logged before the call."""
        if self.popen.poll() is None:
            time.sleep(LOG_SETTLE_S)
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def spawn(
    args: list[str], log: Path, url: str, ready_path: str, path: list[str] | None = None, start_timeout_s: float = START_TIMEOUT_S
) -> Process:
    """Start ``args`` and wait (at most ``start_timeout_s``) until ``url + ready_path`` answers 200; ``path``: more import
    directories."""
    env = {**os.environ, UPSTREAM_KEY_ENV: UPSTREAM_KEY, "PYTHONUNBUFFERED": "1"}
    handle = log.open("wb")
    # The gateway keeps its embedded state (the SQLite ledger) in its working directory.
    python_path = os.pathsep.join([str(REPO), *(path or [])])
    popen = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, cwd=log.parent, env={**env, "PYTHONPATH": python_path})
    handle.close()
    proc = Process(popen, log, url)
    deadline = time.monotonic() + start_timeout_s
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{args[2:4]} exited with {popen.returncode}:\n{proc.output()[-4000:]}")
        try:
            if httpx.get(url + ready_path, timeout=1.0).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"{args[2:4]} did not become ready within {start_timeout_s}s:\n{proc.output()[-4000:]}")


def serve(settings: dict[str, Any], workdir: Path, ready_path: str = "/healthz", path: list[str] | None = None) -> Process:
    """Write ``settings`` as the config in ``workdir`` and start a gateway on a free port there."""
    config = workdir / "sluicegate.yaml"
    config.write_bytes(msgspec.yaml.encode(settings))
    port = free_port()
    args = [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(port)]
    return spawn(args, workdir / "gateway.log", f"http://127.0.0.1:{port}", ready_path, path)


def _deployment(name: str, upstream: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "provider": "openai", "base_url": upstream, "model": model, **extra}


def gateway_config(upstream: str, **server: Any) -> dict[str, Any]:
    """The aliases every e2e test relies on; ``upstream`` is the fake's /v1 URL."""
    key = {"env": UPSTREAM_KEY_ENV}
    deployments = [
        _deployment("fake", upstream, "fake-normal", api_key=key),
        _deployment("fake-embed", upstream, "fake-embed"),
        _deployment("fake-slow", upstream, "fake-slow"),
        _deployment("broken", upstream, "error_500"),
        _deployment("overloaded", upstream, "error_503"),
        _deployment("midstream", upstream, "error_midstream"),
        _deployment("disconnect", upstream, "disconnect_midstream"),
        _deployment("ratelimited", upstream, "error_429"),
        _deployment("rejects", upstream, "error_400"),
        _deployment("timeout", upstream, "fake-slow", timeouts={"read_s": 0.5, "total_s": 1}),
        # A port that was free a moment ago: nothing listens there.
        _deployment("unreachable", f"http://127.0.0.1:{free_port()}/v1", "fake-model", timeouts={"connect_s": 2}),
        _deployment("fake-second", upstream, "fake-model"),
    ]
    aliases = {
        "fake-model": ["fake"],
        "embed-model": ["fake-embed"],
        "slow-model": ["fake-slow"],
        "broken": ["broken"],
        "overloaded": ["overloaded"],
        "midstream": ["midstream"],
        "disconnect": ["disconnect"],
        "fallback": ["overloaded", "fake-second"],
        "ratelimited": ["ratelimited"],
        "rejects": ["rejects"],
        "timeout-model": ["timeout"],
        "unreachable": ["unreachable"],
    }
    return {
        "server": {"host": "127.0.0.1", "log_level": "debug", **server},
        # Deterministic failures: one retry (so `fallback` can reach its second
        # deployment), Retry-After never waited out, and breakers that do not
        # open, so one test's failures cannot change another test's answer.
        "resilience": {
            "max_attempts": 2,
            "backoff_base_s": 0.01,
            "max_retry_after_s": 0,
            "breaker_consecutive_failures": 1000,
            "breaker_min_requests": 1000,
        },
        "deployments": deployments,
        "models": [{"alias": a, "deployments": d} for a, d in aliases.items()],
        "tenants": [{"id": "e2e", "keys": [{"id": "e2e-key", "hash": hash_api_key(API_KEY)}]}],
    }


GatewayFactory = Callable[..., Process]


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def upstream_key() -> str:
    return UPSTREAM_KEY


@pytest.fixture(scope="session")
def assert_openai_error() -> Callable[..., dict[str, Any]]:
    """Check a response is an OpenAI-shaped error; give back its ``error`` object."""

    def check(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert list(body) == ["error"], body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"], error
        assert isinstance(error["type"], str) and error["type"], error
        assert error["code"] is None or isinstance(error["code"], str), error
        if param is not None:
            assert error["param"] == param, error
        return dict(error)

    return check


@pytest.fixture(scope="session")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    port = free_port()
    log = tmp_path_factory.mktemp("fake") / "fake.log"
    args = [sys.executable, "-m", "bench.fake_upstream", "--host", "127.0.0.1", "--port", str(port)]
    proc = spawn(args, log, f"http://127.0.0.1:{port}", "/v1/models")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def launch_gateway(tmp_path_factory: pytest.TempPathFactory, fake_server: Process) -> Iterator[GatewayFactory]:
    """Start a gateway in front of the fake: ``launch_gateway(**server_settings)``; stopped at the end."""
    started: list[Process] = []

    def launch(extra_aliases: dict[str, tuple[str, str]] | None = None, **server: Any) -> Process:
        """``extra_aliases`` maps an alias to (base_url, model) of one more deployment."""
        port = free_port()
        workdir = tmp_path_factory.mktemp("gateway")
        settings = gateway_config(fake_server.url + "/v1", **server)
        for alias, (base_url, model) in (extra_aliases or {}).items():
            settings["deployments"].append(_deployment(alias, base_url, model))
            settings["models"].append({"alias": alias, "deployments": [alias]})
        config = workdir / "sluicegate.yaml"
        config.write_bytes(msgspec.yaml.encode(settings))
        args = [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(port)]
        proc = spawn(args, workdir / "gateway.log", f"http://127.0.0.1:{port}", "/healthz")
        started.append(proc)
        return proc

    yield launch
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def gateway(launch_gateway: GatewayFactory) -> Process:
    return launch_gateway()


@pytest.fixture(scope="session")
def client(gateway: Process) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=API_KEY, max_retries=0, timeout=20.0) as sdk:
        yield sdk


@pytest.fixture(scope="session")
async def aclient(gateway: Process) -> Any:
    sdk = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=API_KEY, max_retries=0, timeout=20.0)
    yield sdk
    await sdk.close()


@pytest.fixture
def http(gateway: Process) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=20.0) as session:
        yield session


@pytest.fixture
def upstream_requests(fake_server: Process) -> Callable[[str], list[dict[str, Any]]]:
    """Requests the fake recorded whose body mentions ``marker``."""

    def find(marker: str) -> list[dict[str, Any]]:
        recorded = httpx.get(fake_server.url + "/_fake/requests", timeout=5.0).json()
        return [r for r in recorded if marker in msgspec.json.encode(r["json"]).decode()]

    return find
