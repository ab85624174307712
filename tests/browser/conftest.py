"""Browser tests of the admin console: a real gateway and fake upstream as subprocesses, driven by headless Chromium.

Chromium is the system's (Debian's ``chromium``, installed by scripts/install.sh
and .ci/run); Playwright never downloads one. Screenshots go to
``test-artifacts/console/`` or the folder ``SLUICEGATE_CONSOLE_ARTIFACTS`` names.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import msgspec
import pytest

from router.auth import hash_api_key
from tests.e2e.conftest import REPO, Process, free_port, spawn

CHROMIUM = os.environ.get("SLUICEGATE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS_ENV = "SLUICEGATE_CONSOLE_ARTIFACTS"
REQUIRED_ENV = "SLUICEGATE_BROWSER_REQUIRED"
PRICE = {"input_per_mtok": 1_000_000, "output_per_mtok": 1_000_000}  # 1 micro-USD a token


@dataclass
class Console:
    url: str
    ops_key: str
    admin_key: str  # tenant:read + tenant:write of tenant `globex`
    other_key: str  # tenant:write of tenant `initech`
    process: Process


def _settings(upstream: str, keys: dict[str, str], workdir: Path) -> dict[str, Any]:
    def dep(name: str) -> dict[str, Any]:
        return {"name": name, "provider": "openai", "base_url": upstream, "model": "fake-model", "price": PRICE}

    def tenant(tid: str, name: str, key: str, scopes: list[str]) -> dict[str, Any]:
        return {"id": tid, "name": name, "keys": [{"id": f"{tid}-admin", "hash": hash_api_key(key), "scopes": scopes}]}

    canary = {"candidate": ["candidate"], "steps": [25, 100], "interval_s": 3600, "min_samples": 1000}
    return {
        "server": {"host": "127.0.0.1", "log_level": "warning"},
        "deployments": [dep("primary"), dep("stable"), dep("candidate")],
        "models": [{"alias": "chat", "deployments": ["primary"]}, {"alias": "assist", "deployments": ["stable"], "canary": canary}],
        "tenants": [
            tenant("ops", "Operations", keys["ops"], ["ops:*"]),
            {
                **tenant("globex", "Globex", keys["admin"], ["tenant:read", "tenant:write"]),
                "budgets": [{"kind": "tokens", "period": "monthly", "limit": 1_000_000}],
            },
            tenant("initech", "Initech", keys["other"], ["tenant:read", "tenant:write"]),
        ],  # fmt: skip
        "state": {"ledger_path": str(workdir / "ledger.sqlite"), "ledger_spool_path": str(workdir / "spool")},
    }


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get(ARTIFACTS_ENV) or REPO / "test-artifacts" / "console")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    fake_log = tmp_path_factory.mktemp("console-fake") / "fake.log"
    fake_port = free_port()
    fake = spawn([sys.executable, "-m", "bench.fake_upstream", "--host", "127.0.0.1", "--port", str(fake_port)],
                 fake_log, f"http://127.0.0.1:{fake_port}", "/v1/models")  # fmt: skip
    keys = {name: f"sk-console-{name}-{secrets.token_hex(12)}" for name in ("ops", "admin", "other")}
    workdir = tmp_path_factory.mktemp("console-gateway")
    config = workdir / "sluicegate.yaml"
    config.write_bytes(msgspec.yaml.encode(_settings(fake.url + "/v1", keys, workdir)))
    port = free_port()
    args = [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(port)]
    gateway = spawn(args, workdir / "gateway.log", f"http://127.0.0.1:{port}", "/healthz")
    try:
        yield Console(gateway.url, keys["ops"], keys["admin"], keys["other"], gateway)
    finally:
        gateway.stop()
        fake.stop()


def _unavailable(reason: str) -> NoReturn:
    """Skip, or fail where the browser is required (.ci/run sets SLUICEGATE_BROWSER_REQUIRED)."""
    if os.environ.get(REQUIRED_ENV):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    """Headless Chromium through Playwright's asyncio API, on the test session's event loop."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("playwright is not installed (the dev extra)")
    if not Path(CHROMIUM).is_file():
        _unavailable(f"no Chromium at {CHROMIUM} (Debian package `chromium`)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        await browser.close()
