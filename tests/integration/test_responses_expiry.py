"""Stored responses expire: through the HTTP routes with the openai SDK, on the gateway's clock.

The gateway runs in this process in front of the fake upstream, with its
response store in memory (ledger off), in SQLite beside the ledger, or in a
throwaway PostgreSQL database. Its clock is the test's: a month passes
without a sleep.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import openai
import pytest

from bench.fake_upstream import FakeUpstream
from router.gateway import Gateway
from tests.conftest import OTHER_KEY, TEST_KEY, make_config
from tests.integration.gateway_server import running_gateway

ADMIN_DSN = os.environ.get("SLUICEGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
DAY = 86_400


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def state(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """The `state` overrides that put the response store where this run wants it."""
    if request.param == "memory":
        yield {"ledger": "off"}
        return
    if request.param == "sqlite":
        yield {}
        return
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        pytest.skip("PostgreSQL is not reachable")
    name = f"sg_responses_expiry_{secrets.token_hex(5)}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield {"ledger": "postgres", "postgres_dsn": f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"}
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


def _error(exc: openai.APIStatusError, response_id: str) -> dict[str, Any]:
    """The error body with the id it names taken out, to compare with an unknown id's."""
    body: dict[str, Any] = exc.response.json()["error"]
    return {**body, "message": body["message"].replace(response_id, "<id>")}


async def test_an_expired_response_is_a_404_everywhere_then_swept(
    fake_upstream: FakeUpstream, state: dict[str, Any], tmp_path: Any
) -> None:
    config = make_config(
        fake_upstream.url,
        state={
            "ledger_path": str(tmp_path / "ledger.sqlite"),
            "ledger_spool_path": str(tmp_path / "ledger.spool"),
            "responses_retention_days": 30,
            **state,
        },
    )
    clock = Clock()
    async with running_gateway(config, Gateway(config, clock=clock)) as (base, gateway):
        assert gateway.responses_sweeper.running, "the gateway's start starts the sweep"
        sdk = openai.AsyncOpenAI(base_url=base + "/v1", api_key=TEST_KEY, max_retries=0, timeout=20.0)
        other = openai.AsyncOpenAI(base_url=base + "/v1", api_key=OTHER_KEY, max_retries=0, timeout=20.0)
        try:
            old = await sdk.responses.create(model="fake-model", input="hello")
            clock.now += 29 * DAY
            young = await sdk.responses.create(model="fake-model", input="hello again")
            theirs = await other.responses.create(model="fake-model", input="hello from b")
            assert (await sdk.responses.retrieve(old.id)).id == old.id, "29 days on it is still there"

            clock.now += 1 * DAY  # `old` is 30 days old now; the others are 1 day old
            unknown = "resp_" + secrets.token_hex(12)
            for call in (
                lambda rid: sdk.responses.retrieve(rid),
                lambda rid: sdk.responses.input_items.list(rid),
                lambda rid: sdk.responses.delete(rid),
            ):
                with pytest.raises(openai.NotFoundError) as expired:
                    await call(old.id)
                with pytest.raises(openai.NotFoundError) as missing:
                    await call(unknown)
                assert _error(expired.value, old.id) == _error(missing.value, unknown)
            with pytest.raises(openai.NotFoundError) as expired:
                await sdk.responses.create(model="fake-model", input="go on", previous_response_id=old.id)
            with pytest.raises(openai.NotFoundError) as missing:
                await sdk.responses.create(model="fake-model", input="go on", previous_response_id=unknown)
            assert _error(expired.value, old.id) == _error(missing.value, unknown)
            assert _error(expired.value, old.id)["code"] == "previous_response_not_found"

            continued = await sdk.responses.create(model="fake-model", input="go on", previous_response_id=young.id)
            assert continued.previous_response_id == young.id

            assert await gateway.responses_sweeper.sweep() == 1
            assert (await sdk.responses.retrieve(young.id)).id == young.id
            assert (await other.responses.retrieve(theirs.id)).id == theirs.id
            clock.now -= 30 * DAY  # back before it expired: swept, it is gone for good
            with pytest.raises(openai.NotFoundError):
                await sdk.responses.retrieve(old.id)
        finally:
            await sdk.close()
            await other.close()
        async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
            assert "sluicegate_responses_expired_total 1.0" in await resp.text()
    assert not gateway.responses_sweeper.running, "and its stop stops it"


async def test_with_no_retention_no_sweep_runs_and_nothing_expires(fake_upstream: FakeUpstream) -> None:
    config = make_config(fake_upstream.url, state={"ledger": "off", "responses_retention_days": 0})
    clock = Clock()
    async with running_gateway(config, Gateway(config, clock=clock)) as (base, gateway):
        assert not gateway.responses_sweeper.running
        async with openai.AsyncOpenAI(base_url=base + "/v1", api_key=TEST_KEY, max_retries=0, timeout=20.0) as sdk:
            kept = await sdk.responses.create(model="fake-model", input="hello")
            clock.now += 3650 * DAY
            assert (await sdk.responses.retrieve(kept.id)).id == kept.id
