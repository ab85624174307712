"""Canaries end to end in one process: decisions as config versions, the alert, steering, stickiness.

Embedded mode (memory config and sample stores, one replica that always holds
the lease). Stable and candidate are two separate fakes, so one can be made to
fail while the other stays healthy.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bench.fake_upstream import FakeUpstream, start_fake_upstream
from core.config import Config
from router.auth import hash_api_key
from tests.conftest import OTHER_KEY, TEST_KEY
from tests.fakes.webhook import webhook_receiver
from tests.integration.gateway_server import running_gateway

Json = dict[str, Any]
Fakes = tuple[FakeUpstream, FakeUpstream]
OPS_KEY = "sk-canary-ops-0123456789"
OPS = {"authorization": f"Bearer {OPS_KEY}"}
USER = {"authorization": f"Bearer {TEST_KEY}"}
OTHER = {"authorization": f"Bearer {OTHER_KEY}"}
SECRET_ENV = "SLUICEGATE_TEST_CANARY_WEBHOOK_SECRET"
SECRET = "canary-webhook-secret-for-tests"
CHAT: Json = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}


class Hook:
    """The alert webhook's receiver: every call's headers and raw body."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        self.arrived.set()
        return web.Response(status=204)


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    stable, candidate = await start_fake_upstream(), await start_fake_upstream()
    yield stable, candidate
    await stable.close()
    await candidate.close()


@pytest.fixture
async def webhook(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, Hook]]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    hook = Hook()
    async with webhook_receiver(hook.handle) as url:
        yield url, hook


def raw_config(fakes: Fakes, tmp: Path, canary: Json, *, webhook: str | None = None, tenant: Json | None = None) -> Json:
    """Alias `m`: stable (self-hosted) serves, candidate (cloud) is the canary; tenant `t` (TEST_KEY), `u` (OTHER_KEY), `ops`."""
    price = {"input_per_mtok": 1_000_000, "output_per_mtok": 2_000_000}

    def dep(name: str, fake: FakeUpstream, privacy: str) -> Json:
        return {"name": name, "provider": "openai", "base_url": fake.url, "model": "fake-model", "privacy": privacy, "price": price}

    return {
        "server": {"log_level": "warning"},
        "deployments": [dep("stable", fakes[0], "self_hosted"), dep("candidate", fakes[1], "cloud")],
        "models": [{"alias": "m", "deployments": ["stable"], "canary": {"candidate": ["candidate"], **canary}}],
        "tenants": [
            {"id": "t", "keys": [{"id": "k", "hash": hash_api_key(TEST_KEY)}], **(tenant or {})},
            {"id": "u", "keys": [{"id": "k", "hash": hash_api_key(OTHER_KEY)}]},
            {"id": "ops", "keys": [{"id": "ops", "hash": hash_api_key(OPS_KEY), "scopes": ["ops:*"]}]},
        ],
        "alerts": {"webhook_url": webhook, "webhook_secret": {"env": SECRET_ENV}, "timeout_s": 2} if webhook else {},
        "state": {"ledger_path": str(tmp / "ledger.sqlite"), "ledger_spool_path": str(tmp / "spool")},
    }


def canary_config(fakes: Fakes, tmp: Path, canary: Json, **kwargs: Any) -> Config:
    return msgspec.convert(raw_config(fakes, tmp, canary, **kwargs), Config)


async def chat(http: aiohttp.ClientSession, base: str, headers: dict[str, str] = USER, **body: Any) -> tuple[int, dict[str, str], Json]:
    async with http.post(f"{base}/v1/chat/completions", json={**CHAT, **body}, headers=headers) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.json()


async def burst(http: aiohttp.ClientSession, base: str, n: int, headers: dict[str, str] = USER) -> list[tuple[int, dict[str, str], Json]]:
    return list(await asyncio.gather(*(chat(http, base, headers) for _ in range(n))))


async def get_json(http: aiohttp.ClientSession, url: str, headers: dict[str, str] = OPS) -> Any:
    async with http.get(url, headers=headers) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def canary(http: aiohttp.ClientSession, base: str, model: str = "m") -> Json:
    listing = await get_json(http, f"{base}/admin/v1/canaries")
    found: Json = next(c for c in listing["data"] if c["model"] == model)
    return found


async def canary_actions(http: aiohttp.ClientSession, base: str, actor: str = "canary") -> list[str]:
    """The canary writes in the history by ``actor``, oldest first: "started", "step", "rollback", ..."""
    history = await get_json(http, f"{base}/admin/v1/config/history")
    return [v["reason"].split(": ")[1] for v in reversed(history["data"]) if v["actor"] == actor]


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s}s"
        await asyncio.sleep(0.05)


async def started(http: aiohttp.ClientSession, base: str, model: str = "m") -> None:
    """The decider has started the canary's clock (its samples count from here)."""

    async def check() -> bool:
        return float((await canary(http, base, model))["since"]) > 0

    await eventually(check, 5, f"canary of {model} started")


def chats(fake: FakeUpstream) -> int:
    return sum(1 for r in fake.requests if r["path"] == "/v1/chat/completions")


async def metric(http: aiohttp.ClientSession, base: str, name: str, **labels: str) -> float:
    async with http.get(f"{base}/metrics") as r:
        text = await r.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# behavior --> (delay_ms, words one of which the rollback's reason names)
FAILURES: dict[str, tuple[int | None, tuple[str, ...]]] = {
    "error_500": (None, ("error rate", "unhealthy")),
    "slow": (400, ("p95 latency",)),
}


@pytest.mark.parametrize("behavior", sorted(FAILURES))
async def test_a_failing_candidate_is_rolled_back_alerted_and_gets_no_more_traffic(
    behavior: str, fakes: Fakes, webhook: tuple[str, Hook], tmp_path: Path
) -> None:
    _, candidate = fakes
    url, hook = webhook
    interval = 1.0
    config = canary_config(fakes, tmp_path, {"steps": [50, 100], "interval_s": interval, "min_samples": 10, "sticky": "none"}, webhook=url)
    async with running_gateway(config) as (base, _), aiohttp.ClientSession() as http:
        await started(http, base)
        # Healthy at first: the candidate serves a few (fewer than min_samples, so nothing is decided yet).
        for _ in range(60):
            if chats(candidate) >= 3:
                break
            assert (await chat(http, base))[0] == 200
        assert chats(candidate) >= 3 and (await canary(http, base))["phase"] == "canary"

        delay, words = FAILURES[behavior]
        async with http.post(candidate.url.removesuffix("/v1") + "/_fake/behavior", json={"behavior": behavior, "delay_ms": delay}) as r:
            assert r.status == 200
        flipped = time.monotonic()
        while (await canary(http, base))["phase"] == "canary":
            assert time.monotonic() - flipped < 15, "the canary was never rolled back"
            assert all(status == 200 for status, _, _ in await burst(http, base, 16))
        assert time.monotonic() - flipped < interval + 2.0, "rolled back later than one interval plus a little"

        state = await canary(http, base)
        assert (state["phase"], state["decision"]) == ("rolled_back", "rollback")
        assert any(word in state["reason"] for word in words), state["reason"]
        history = (await get_json(http, f"{base}/admin/v1/config/history"))["data"]
        newest = history[0]
        assert newest["actor"] == "canary" and newest["reason"].startswith("canary m: rollback: ")
        assert await canary_actions(http, base) == ["started", "rollback"]
        assert await metric(http, base, "sluicegate_canary_decisions_total", model="m", action="rollback") == 1

        await asyncio.wait_for(hook.arrived.wait(), 5)
        headers, body = hook.calls[0]
        signed = f"{headers['x-sluicegate-timestamp']}.".encode() + body
        expected = "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-sluicegate-signature"], expected)
        event = msgspec.json.decode(body)
        assert (event["event"], event["model"], event["config_version"]) == ("canary.rollback", "m", newest["version"])

        audit = (await get_json(http, f"{base}/admin/v1/audit?limit=1000"))["data"]
        commit = ("config.commit", "canary", f"config:v{newest['version']}")
        assert commit in {(e["action"], e["actor"], e["target"]) for e in audit}

        # Taken out: nothing more reaches the candidate, and no response says it served.
        before = chats(candidate)
        for _ in range(2):
            for status, response_headers, _ in await burst(http, base, 20):
                assert status == 200 and response_headers["x-sluicegate-deployment"] == "stable"
                assert response_headers.get("x-sluicegate-canary") != "candidate"
        assert chats(candidate) == before


async def test_a_healthy_canary_walks_every_step_and_is_promoted(fakes: Fakes, tmp_path: Path) -> None:
    stable, _ = fakes
    # Latency ratios between two identical fakes are noise on a busy machine: errors decide here.
    gates = {"max_p95_latency_ratio": None, "max_p95_ttft_ratio": None}
    spec = {"steps": [10, 50, 100], "interval_s": 0.5, "min_samples": 10, "sticky": "none", "gates": gates}
    async with running_gateway(canary_config(fakes, tmp_path, spec)) as (base, _), aiohttp.ClientSession() as http:
        await started(http, base)
        weights: list[float] = []
        deadline = time.monotonic() + 25
        while (state := await canary(http, base))["phase"] == "canary":
            assert time.monotonic() < deadline, f"not promoted: {state}"
            if not weights or weights[-1] != state["weight"]:
                weights.append(state["weight"])
            assert all(status == 200 for status, _, _ in await burst(http, base, 20))
        assert state["phase"] == "promoted", state
        assert weights == [10, 50, 100]
        assert await canary_actions(http, base) == ["started", "step", "step", "promote"]
        current = await get_json(http, f"{base}/admin/v1/config")
        assert current["config"]["models"][0]["deployments"][0] == "candidate"

        stable.requests.clear()
        for status, headers, _ in await burst(http, base, 20):
            assert status == 200 and headers["x-sluicegate-deployment"] == "candidate"
        assert chats(stable) == 0


async def test_too_few_samples_hold_the_canary_where_it_is(fakes: Fakes, tmp_path: Path) -> None:
    _, candidate = fakes
    spec = {"steps": [50, 100], "interval_s": 0.5, "min_samples": 1000, "sticky": "none"}
    async with running_gateway(canary_config(fakes, tmp_path, spec)) as (base, _), aiohttp.ClientSession() as http:
        await started(http, base)
        for _ in range(2):
            assert all(status == 200 for status, _, _ in await burst(http, base, 20))
        await asyncio.sleep(2.5)  # five intervals
        state = await canary(http, base)
        assert (state["phase"], state["step"], state["weight"]) == ("canary", 0, 50)
        assert state["last_evaluation"]["action"] == "hold" and "too few samples" in state["last_evaluation"]["reason"]
        assert state["numbers"]["candidate_requests"] == chats(candidate) > 0
        assert await canary_actions(http, base) == ["started"]


async def test_a_session_stays_on_its_arm(fakes: Fakes, tmp_path: Path) -> None:
    spec = {"steps": [50, 100], "interval_s": 60, "min_samples": 1000, "sticky": "session"}
    async with running_gateway(canary_config(fakes, tmp_path, spec)) as (base, _), aiohttp.ClientSession() as http:
        arms: dict[str, set[tuple[str, str]]] = {}
        for i in range(16):
            session = {**USER, "x-session-id": f"session-{i}"}
            for status, headers, _ in await burst(http, base, 4, session):
                assert status == 200
                arms.setdefault(f"session-{i}", set()).add((headers["x-sluicegate-canary"], headers["x-sluicegate-deployment"]))
        assert all(len(seen) == 1 for seen in arms.values()), arms
        assert {seen.pop() for seen in arms.values()} == {("stable", "stable"), ("candidate", "candidate")}


async def _steer(http: aiohttp.ClientSession, base: str, model: str, action: str, headers: dict[str, str] = OPS) -> tuple[int, Json]:
    async with http.post(f"{base}/admin/v1/canaries/{model}/{action}", json={"reason": "test"}, headers=headers) as r:
        return r.status, await r.json()


async def test_operators_pause_resume_abort_and_promote(fakes: Fakes, tmp_path: Path) -> None:
    raw = raw_config(fakes, tmp_path, {"steps": [50, 100], "interval_s": 60, "min_samples": 1000})
    raw["models"] += [{**raw["models"][0], "alias": "m2"}, {"alias": "plain", "deployments": ["stable"]}]
    async with running_gateway(msgspec.convert(raw, Config)) as (base, _), aiohttp.ClientSession() as http:
        # The decider's first writes (each canary's clock) come before any operator's.
        await started(http, base, "m")
        await started(http, base, "m2")
        assert (await _steer(http, base, "m", "pause"))[0] == 200
        assert (await canary(http, base))["phase"] == "paused"
        status, body = await _steer(http, base, "m", "pause")
        assert status == 409 and body["error"]["code"] == "canary_state_conflict"
        assert (await _steer(http, base, "m", "resume"))[0] == 200
        assert ((await canary(http, base))["phase"], (await canary(http, base))["weight"]) == ("canary", 50)
        assert (await _steer(http, base, "m", "resume"))[0] == 409
        assert (await _steer(http, base, "m", "abort"))[0] == 200
        assert (await canary(http, base))["phase"] == "rolled_back"
        assert (await _steer(http, base, "m", "promote"))[0] == 409

        assert (await _steer(http, base, "m2", "promote"))[0] == 200
        assert (await canary(http, base, "m2"))["phase"] == "promoted"
        current = await get_json(http, f"{base}/admin/v1/config")
        assert [m["deployments"][0] for m in current["config"]["models"]] == ["stable", "candidate", "stable"]
        assert (await _steer(http, base, "m2", "abort"))[0] == 409

        assert await canary_actions(http, base, actor="ops/ops") == ["pause", "resume", "abort", "promote"]
        for action in ("pause", "resume", "abort", "promote"):
            model = "m2" if action == "promote" else "m"
            assert await metric(http, base, "sluicegate_canary_decisions_total", model=model, action=action) == 1
        assert (await _steer(http, base, "nope", "pause"))[0] == 404
        assert (await _steer(http, base, "plain", "pause"))[0] == 404
        assert (await _steer(http, base, "m2", "explode"))[0] == 400
        assert (await _steer(http, base, "m2", "promote", USER))[0] == 403
        async with http.get(f"{base}/admin/v1/canaries", headers=USER) as r:
            assert r.status == 403
