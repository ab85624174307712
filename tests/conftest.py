"""Shared fixtures: the fake upstream and configs built around it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from bench.fake_upstream import FakeUpstream, start_fake_upstream
from core.config import Config
from router.auth import hash_api_key
from tests import pgvector_server

TEST_KEY = "sk-test-tenant-a-0123456789"
OTHER_KEY = "sk-test-tenant-b-0123456789"


@pytest.fixture(scope="session")
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    upstream = await start_fake_upstream()
    yield upstream
    await upstream.close()


@pytest.fixture(scope="session")
async def pgvector_dsn() -> AsyncIterator[str]:
    """A PostgreSQL on which `CREATE EXTENSION vector` works (tests/pgvector_server.py says which); skips when none can be had."""
    if dsn := os.environ.get(pgvector_server.ENV_DSN):
        yield dsn
        return
    if await pgvector_server.offers_pgvector(pgvector_server.LOCAL_DSN):
        yield pgvector_server.LOCAL_DSN
        return
    try:
        # Blocking, and on the event loop's thread on purpose: the server lives as long as the thread that starts it.
        server = pgvector_server.start_bundled()
    except pgvector_server.Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server.dsn
    finally:
        server.stop()


def make_config(upstream_url: str, **overrides: Any) -> Config:
    """A config whose aliases pick the fake's behaviours through the upstream model name."""

    def dep(name: str, model: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "provider": "openai", "base_url": upstream_url, "model": model, **extra}

    raw: dict[str, Any] = {
        "deployments": [
            dep("normal", "fake-model"),
            dep("broken", "error_500"),
            dep("overloaded", "error_503"),
            dep("midstream", "error_midstream"),
            dep("dropper", "disconnect_midstream"),
            dep("ratelimited", "error_429"),
            dep("rejects", "error_400"),
            dep("no-usage", "no_usage"),
            dep("unreachable", "fake-model", base_url="http://127.0.0.1:9/v1", timeouts={"connect_s": 1}),
            dep("slow", "fake-slow", timeouts={"read_s": 0.3, "total_s": 1}),
        ],
        "models": [
            {"alias": "fake-model", "deployments": ["normal"]},
            {"alias": "broken", "deployments": ["broken"]},
            {"alias": "fallback", "deployments": ["overloaded", "normal"]},
            {"alias": "no-fallback-on-4xx", "deployments": ["rejects", "normal"]},
            {"alias": "midstream", "deployments": ["midstream", "normal"]},
            {"alias": "dropper", "deployments": ["dropper"]},
            {"alias": "ratelimited", "deployments": ["ratelimited"]},
            {"alias": "no-usage", "deployments": ["no-usage"]},
            {"alias": "unreachable", "deployments": ["unreachable"]},
            {"alias": "slow", "deployments": ["slow"]},
        ],
        "tenants": [
            {"id": "tenant-a", "keys": [{"id": "key-a", "hash": hash_api_key(TEST_KEY)}]},
            {"id": "tenant-b", "keys": [{"id": "key-b", "hash": hash_api_key(OTHER_KEY)}]},
        ],
    }
    # Each config gets its own ledger file, never one in the working directory.
    ledger_dir = tempfile.mkdtemp(prefix="sluicegate-test-ledger-")
    raw["state"] = {"ledger_path": f"{ledger_dir}/ledger.sqlite", "ledger_spool_path": f"{ledger_dir}/ledger.spool"}
    raw.update(overrides)
    return msgspec.convert(raw, Config)
