"""Moderation guardrails against a fake /v1/moderations endpoint: flagged, unflagged, thresholds, faults."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import msgspec
import pytest

from core.config_guardrails import GuardrailConfig
from core.errors import UpstreamConnectError, UpstreamError
from policies.guardrails import GuardrailDeps, Guardrails, build_guardrails
from policies.guardrails_moderation import HttpModerator, ModerationResult, moderation_body
from policies.guardrails_types import Verdict
from tests.fakes.moderation_server import ModerationServer, moderation_server


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


@pytest.fixture
async def server() -> AsyncIterator[ModerationServer]:
    async with moderation_server() as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


def build(pool: ThreadPoolExecutor, session: aiohttp.ClientSession, base_url: str, model: str | None, **entry: Any) -> Guardrails:
    moderator = HttpModerator(session, base_url, name="omni", api_key="sk-moderation", model=model)
    config = msgspec.convert([{"kind": "moderation", "name": "mod", "deployment": "omni", **entry}], list[GuardrailConfig])
    return build_guardrails(config, GuardrailDeps(executor=pool, moderators={"omni": moderator}))


def chat(*texts: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": t} for t in texts]}


async def test_flagged_and_unflagged(pool: ThreadPoolExecutor, session: aiohttp.ClientSession, server: ModerationServer) -> None:
    guards = build(pool, session, server.base_url, "omni-moderation-latest")
    flagged = await guards.pre.check_request("chat", chat("hello", "I will kill the process"))
    assert flagged.blocked == Verdict("blocked", "mod", "moderation.violence")
    assert (await guards.pre.check_request("chat", chat("hello there", "meh"))).blocked is None
    body, authorization = server.requests[0]
    assert body == {"input": ["hello", "I will kill the process"], "model": "omni-moderation-latest"}
    assert authorization == "Bearer sk-moderation"


async def test_thresholds_and_categories(pool: ThreadPoolExecutor, session: aiohttp.ClientSession, server: ModerationServer) -> None:
    low = build(pool, session, server.base_url, None, threshold=0.3, categories=["harassment"])
    assert (await low.pre.check_request("chat", chat("meh"))).blocked == Verdict("blocked", "mod", "moderation.harassment")
    # Only the configured categories count: violence is not watched here.
    assert (await low.pre.check_request("chat", chat("kill"))).blocked is None
    any_category = build(pool, session, server.base_url, None, threshold=0.85)
    assert (await any_category.pre.check_request("chat", chat("hate and kill"))).blocked == Verdict("blocked", "mod", "moderation.violence")
    named = build(pool, session, server.base_url, None, categories=["hate"])
    assert (await named.pre.check_request("chat", chat("kill"))).blocked is None
    assert (await named.pre.check_request("chat", chat("hate"))).blocked == Verdict("blocked", "mod", "moderation.hate")


async def test_post_call_and_nothing_to_moderate(
    pool: ThreadPoolExecutor, session: aiohttp.ClientSession, server: ModerationServer
) -> None:
    guards = build(pool, session, server.base_url, None, mode="post", action="warn")
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "kill it"}}]}
    result = await guards.post.check_response(answer)
    assert result.blocked is None and result.warnings == (Verdict("warned", "mod", "moderation.violence"),)
    assert (await guards.post.check_response({"choices": []})).blocked is None
    assert len(server.requests) == 1  # no request when there is no text


@pytest.mark.parametrize(("on_error", "blocked"), [("fail_open", False), ("fail_closed", True)])
@pytest.mark.parametrize("model", ["error_500", "short"])
async def test_a_failing_endpoint_follows_on_error(
    pool: ThreadPoolExecutor, session: aiohttp.ClientSession, server: ModerationServer, model: str, on_error: str, blocked: bool
) -> None:
    guards = build(pool, session, server.base_url, model, on_error=on_error)
    result = await guards.pre.check_request("chat", chat("kill", "two"))
    verdict = Verdict("blocked" if blocked else "allowed", "mod", "guardrail_error")
    assert (result.blocked, result.faults) == ((verdict, ()) if blocked else (None, (verdict,)))


@pytest.mark.parametrize(("on_error", "blocked"), [("fail_open", False), ("fail_closed", True)])
async def test_a_slow_endpoint_times_out_within_the_timeout(
    pool: ThreadPoolExecutor, session: aiohttp.ClientSession, server: ModerationServer, on_error: str, blocked: bool
) -> None:
    server.slow_s = 0.6
    guards = build(pool, session, server.base_url, "slow", on_error=on_error, timeout_s=0.3)
    started = time.monotonic()
    result = await guards.pre.check_request("chat", chat("kill"))
    assert time.monotonic() - started < 0.3 + 0.2
    assert (result.blocked is not None) == blocked
    assert (result.blocked or result.faults[0]).category == "guardrail_timeout"


async def test_a_server_that_is_down(pool: ThreadPoolExecutor, session: aiohttp.ClientSession) -> None:
    async with moderation_server() as gone:
        url = gone.base_url
    closed = build(pool, session, url, None, on_error="fail_closed")
    assert (await closed.pre.check_request("chat", chat("hi"))).blocked == Verdict("blocked", "mod", "guardrail_error")
    opened = build(pool, session, url, None, on_error="fail_open")
    assert (await opened.pre.check_request("chat", chat("hi"))).faults == (Verdict("allowed", "mod", "guardrail_error"),)
    with pytest.raises(UpstreamConnectError):
        await HttpModerator(session, url, name="omni").classify(["hi"])


async def test_the_moderator_maps_errors_and_answers_the_moderations_route(
    session: aiohttp.ClientSession, server: ModerationServer
) -> None:
    with pytest.raises(UpstreamError):
        await HttpModerator(session, server.base_url, name="omni", model="error_500").classify(["x"])
    results = await HttpModerator(session, server.base_url, name="omni").classify(["kill", "fine"])
    assert [r.flagged for r in results] == [True, False]
    assert await HttpModerator(session, server.base_url, name="omni").classify([]) == []
    body = moderation_body(results, model="omni-moderation-latest", request_id="r1")
    assert body["id"] == "modr-r1" and body["results"][0]["categories"]["violence"] is True
    assert msgspec.convert(body["results"][1], ModerationResult).flagged is False
