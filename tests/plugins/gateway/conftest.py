"""Fixtures for the gateway plugin: a started plugin on real Redis (a fresh key prefix) and a SQLite task store.

``call`` drives the plugin's ASGI app directly, as the gateway's mount does;
``FakeServices`` authenticates a few fixed bearer tokens (``KEYS``).
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from sluicegate_gateway.options import Options
from sluicegate_gateway.plugin import GatewayPlugin

from core.errors import AuthenticationFailed
from core.principal import Principal

REDIS_URL = os.environ.get("SLUICEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
GITHUB_SECRET, GITLAB_TOKEN, ADO_SECRET = "gh-" + secrets.token_hex(8), "gl-" + secrets.token_hex(8), "ado-" + secrets.token_hex(8)
KEYS = {
    "sk-reader": Principal(tenant="acme", key_id="reader", scopes=frozenset({"tenant:read"})),
    "sk-writer": Principal(tenant="acme", key_id="writer", scopes=frozenset({"tenant:write"})),
    "sk-ops": Principal(tenant="acme", key_id="ops", scopes=frozenset({"ops:*"})),
    "sk-plain": Principal(tenant="acme", key_id="plain"),
    "sk-other": Principal(tenant="globex", key_id="other", scopes=frozenset({"tenant:write"})),
}


class FakeServices:
    def __init__(self, data_dir: str, redis_url: str | None) -> None:
        self.log = logging.getLogger("sluicegate.plugin.gateway.test")
        self.redis_url = redis_url
        self.postgres_dsn: str | None = None
        self.data_dir = data_dir

    async def authenticate(self, authorization: str | None) -> Principal:
        token = (authorization or "").removeprefix("Bearer ")
        if token not in KEYS:
            raise AuthenticationFailed("Invalid API key.")
        return KEYS[token]

    async def principal(self, tenant: str) -> Principal:
        return Principal(tenant=tenant, key_id="plugin:gateway")

    async def complete(self, principal: Principal, body: dict[str, Any], *, kind: str = "chat") -> Any:
        raise NotImplementedError


def repositories() -> list[dict[str, Any]]:
    return [
        {"provider": "github", "repository": "acme/api", "tenant": "acme", "secret": {"env": "GW_TEST_GITHUB"}},
        {"provider": "gitlab", "repository": "acme/platform/api", "tenant": "acme", "secret": {"env": "GW_TEST_GITLAB"}},
        {"provider": "ado", "repository": "fabrikam/Payments/api", "tenant": "acme", "secret": {"env": "GW_TEST_ADO"}, "username": "hooks"},
        {"provider": "github", "repository": "globex/site", "tenant": "globex", "secret": {"env": "GW_TEST_GLOBEX"}},
    ]


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_GITHUB", GITHUB_SECRET)
    monkeypatch.setenv("GW_TEST_GITLAB", GITLAB_TOKEN)
    monkeypatch.setenv("GW_TEST_ADO", ADO_SECRET)
    monkeypatch.setenv("GW_TEST_GLOBEX", "globex-" + GITHUB_SECRET)


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, aioredis.ConnectionError):
        await client.aclose()
        pytest.skip("Redis is not reachable at SLUICEGATE_TEST_REDIS_URL")
    prefix = f"sgtest-gateway:{secrets.token_hex(6)}"
    yield prefix
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def plugin(tmp_path: Path, secret_env: None, redis_prefix: str) -> AsyncIterator[GatewayPlugin]:
    options = msgspec.convert({"repositories": repositories(), "redis_prefix": redis_prefix}, Options)
    made = GatewayPlugin(options, FakeServices(str(tmp_path / "plugins" / "gateway"), REDIS_URL))
    await made.start()
    yield made
    await made.close()


Call = Callable[..., Awaitable[tuple[int, dict[str, Any]]]]


async def call_app(
    plugin: GatewayPlugin, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, query: str = ""
) -> tuple[int, dict[str, Any]]:
    app = plugin.asgi()
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": method, "path": path, "query_string": query.encode(), "headers": raw_headers}
    chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)] or [b""]
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = sent[0]["status"]
    return status, msgspec.json.decode(sent[1]["body"])


@pytest.fixture
def call(plugin: GatewayPlugin) -> Call:
    async def run(
        method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, query: str = ""
    ) -> tuple[int, dict[str, Any]]:
        return await call_app(plugin, method, path, body, headers, query)

    return run
