"""Fixtures for tests that share the real Redis."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def tenant() -> AsyncIterator[str]:
    """A tenant id of its own per test; its counters are removed from Redis afterwards."""
    name = f"t-{secrets.token_hex(5)}"
    yield name
    client = aioredis.from_url(REDIS_URL)
    try:
        async for key in client.scan_iter(match=f"*{name}*"):
            await client.delete(key)
    finally:
        await client.aclose()
