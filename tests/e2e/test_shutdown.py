"""Graceful shutdown: SIGTERM drains in-flight streams, refuses new work, exits 0.

The fake upstream can only be slow before its first byte (``fake-slow``), so a
stream that is slow *between* chunks comes from a small drip server started
here; both kinds are in flight when the signal arrives.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
from aiohttp import web

GRACE_S = 10
DRIP_WORDS = [f"w{i}" for i in range(12)]
DRIP_DELAY_S = 0.25
EXPECTED_FAKE_TEXT = " ".join(["Hello from the fake upstream."] * 4)


async def _drip(request: web.Request) -> web.StreamResponse:
    """An OpenAI chat stream that sends one word every DRIP_DELAY_S seconds."""
    body = await request.json()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    envelope = {"id": "chatcmpl-drip", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
    for i, word in enumerate(DRIP_WORDS):
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        await response.write(b"data: " + msgspec.json.encode({**envelope, "choices": [choice]}) + b"\n\n")
        await asyncio.sleep(DRIP_DELAY_S)
    last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    await response.write(b"data: " + msgspec.json.encode({**envelope, "choices": [last]}) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


@dataclass
class Drained:
    drip_events: list[str]
    slow_events: list[str]
    refused_after_s: float | None
    drip_done_when_refused: bool
    returncode: int | None
    exit_after_s: float
    output: str


async def _read_events(client: httpx.AsyncClient, url: str, body: dict[str, Any], first: asyncio.Event) -> list[str]:
    events: list[str] = []
    async with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                if len(events) >= 2:
                    first.set()
    return events


def _text(events: list[str]) -> str:
    chunks = [msgspec.json.decode(e) for e in events if e != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


async def _refused_within(host: str, port: int, limit_s: float) -> float | None:
    """Seconds until a fresh TCP connection is refused, or None if it never is."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except ConnectionRefusedError:
            return time.monotonic() - started
        writer.close()
        await asyncio.sleep(0.05)
    return None


async def _wait_recorded(fake_url: str, marker: str) -> None:
    async with httpx.AsyncClient(timeout=5.0) as probe:
        for _ in range(100):
            recorded = (await probe.get(fake_url + "/_fake/requests")).json()
            if any(marker in msgspec.json.encode(r["json"]).decode() for r in recorded):
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the slow request never reached the upstream")


@pytest.fixture(scope="module")
async def drip_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _drip)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    await runner.cleanup()


@pytest.fixture(scope="module")
async def drained(launch_gateway: Callable[..., Any], fake_server: Any, drip_url: str, api_key: str) -> Drained:
    """Start two streams, SIGTERM the gateway mid-way, and record what happened."""
    gw = launch_gateway(extra_aliases={"drip-model": (drip_url, "drip")}, grace_period_s=GRACE_S)
    url = gw.url + "/v1/chat/completions"
    marker = "drain-" + secrets.token_hex(6)
    started_drip, started_slow = asyncio.Event(), asyncio.Event()
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {api_key}"}, timeout=30.0) as client:
        drip_body = {"model": "drip-model", "messages": [{"role": "user", "content": "go"}], "stream": True}
        slow_body = {"model": "slow-model", "messages": [{"role": "user", "content": marker}], "stream": True}
        drip = asyncio.create_task(_read_events(client, url, drip_body, started_drip))
        await asyncio.wait_for(started_drip.wait(), 10)
        slow = asyncio.create_task(_read_events(client, url, slow_body, started_slow))
        await _wait_recorded(fake_server.url, marker)
        signalled = time.monotonic()
        gw.popen.send_signal(signal.SIGTERM)
        port = int(gw.url.rsplit(":", 1)[1])
        refused = await _refused_within("127.0.0.1", port, 3.0)
        drip_done = drip.done()
        drip_events, slow_events = await asyncio.gather(drip, slow)
    try:
        returncode: int | None = await asyncio.to_thread(gw.popen.wait, GRACE_S + 5)
    except subprocess.TimeoutExpired:
        returncode = None
    return Drained(
        drip_events, slow_events, refused, drip_done, returncode, time.monotonic() - signalled, gw.output()
    )


def test_stream_in_progress_completes(drained: Drained) -> None:
    assert not drained.drip_done_when_refused, "the stream ended before the gateway stopped listening"
    assert drained.drip_events[-1] == "[DONE]"
    assert _text(drained.drip_events) == " ".join(DRIP_WORDS)


def test_request_waiting_for_first_byte_completes(drained: Drained) -> None:
    assert drained.slow_events[-1] == "[DONE]"
    assert _text(drained.slow_events) == EXPECTED_FAKE_TEXT


def test_new_connections_refused_soon(drained: Drained) -> None:
    assert drained.refused_after_s is not None, "the gateway kept accepting connections after SIGTERM"
    assert drained.refused_after_s < 1.0


def test_exits_zero_within_grace_period(drained: Drained) -> None:
    assert drained.returncode is not None, f"still running {GRACE_S + 5}s after SIGTERM"
    assert drained.exit_after_s < GRACE_S
    assert drained.returncode == 0, f"exit status {drained.returncode}:\n{drained.output[-2000:]}"
