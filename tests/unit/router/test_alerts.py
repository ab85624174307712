"""Alert webhooks: signed bodies, retried with backoff on what may pass, never on what will not."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from aiohttp import web

from core.config import AlertsConfig
from router.alerts import MAX_RETRY_AFTER_S, retry_after_s, send_alert
from tests.fakes.webhook import webhook_receiver

SECRET_ENV = "SLUICEGATE_TEST_ALERT_SECRET"
SECRET = "alert-secret-for-unit-tests"

Answer = Callable[[int], web.Response]


class Receiver:
    """Answers each call with ``answers[i]`` (the last one from then on) and keeps what arrived."""

    def __init__(self) -> None:
        self.answers: list[Answer] = [lambda _: web.Response(status=204)]
        self.calls: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        n = len(self.calls) - 1
        return self.answers[min(n, len(self.answers) - 1)](n)


@pytest.fixture
async def receiver(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, Receiver]]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    hook = Receiver()
    async with webhook_receiver(hook.handle) as url:
        yield url, hook


def config(url: str | None, **extra: Any) -> AlertsConfig:
    raw = {"webhook_url": url, "webhook_secret": {"env": SECRET_ENV}, "timeout_s": 2, **extra}
    return msgspec.convert(raw, AlertsConfig)


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def status(code: int, **headers: str) -> Answer:
    return lambda _: web.Response(status=code, headers=headers)


def valid(headers: dict[str, str], body: bytes) -> bool:
    signed = headers["x-sluicegate-timestamp"].encode() + b"." + body
    expected = "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["x-sluicegate-signature"], expected)


async def test_a_5xx_is_retried_with_backoff_and_each_try_signed(receiver: tuple[str, Receiver]) -> None:
    url, hook = receiver
    hook.answers = [status(503), status(503), status(200)]
    sleeps = Sleeps()
    assert await send_alert(config(url, backoff_s=0.5), {"type": "t", "id": "evt_1", "n": 1}, sleep=sleeps)
    assert len(hook.calls) == 3
    assert sleeps.waits == [0.5, 1.0]
    assert all(valid(headers, body) for headers, body in hook.calls)
    assert len({body for _, body in hook.calls}) == 1
    assert msgspec.json.decode(hook.calls[0][1]) == {"type": "t", "id": "evt_1", "n": 1}


async def test_connection_errors_are_retried_until_the_retries_run_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    sleeps = Sleeps()
    unreachable = config("http://127.0.0.1:9/hook", retries=3, backoff_s=1.0)
    assert not await send_alert(unreachable, {"type": "t"}, sleep=sleeps)
    assert sleeps.waits == [1.0, 2.0, 4.0]


@pytest.mark.parametrize("code", [400, 401, 404, 410, 302])
async def test_other_answers_are_final(receiver: tuple[str, Receiver], code: int) -> None:
    url, hook = receiver
    hook.answers = [status(code, location="http://127.0.0.1:9/elsewhere")]
    sleeps = Sleeps()
    assert not await send_alert(config(url), {"type": "t"}, sleep=sleeps)
    assert len(hook.calls) == 1 and sleeps.waits == []


async def test_retry_after_is_honoured_and_bounded(receiver: tuple[str, Receiver]) -> None:
    url, hook = receiver
    hook.answers = [status(429, **{"retry-after": "3"}), status(503, **{"retry-after": "86400"}), status(429), status(200)]
    sleeps = Sleeps()
    assert await send_alert(config(url, backoff_s=1.0), {"type": "t"}, sleep=sleeps)
    assert sleeps.waits == [3.0, MAX_RETRY_AFTER_S, 4.0]


async def test_no_retries_means_one_try(receiver: tuple[str, Receiver]) -> None:
    url, hook = receiver
    hook.answers = [status(500)]
    assert not await send_alert(config(url, retries=0), {"type": "t"}, sleep=Sleeps())
    assert len(hook.calls) == 1


async def test_an_event_without_an_id_gets_one_kept_across_tries(receiver: tuple[str, Receiver]) -> None:
    url, hook = receiver
    hook.answers = [status(502), status(200)]
    event = {"event": "canary.rollback", "model": "m"}
    assert await send_alert(config(url), event, sleep=Sleeps())
    first, second = (msgspec.json.decode(body) for _, body in hook.calls)
    assert first == second and first["id"] and first["event"] == "canary.rollback"
    assert "id" not in event


async def test_nothing_is_sent_without_a_url_or_with_an_unreadable_secret(
    receiver: tuple[str, Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, hook = receiver
    assert not await send_alert(config(None), {"type": "t"}, sleep=Sleeps())
    monkeypatch.delenv(SECRET_ENV)
    assert not await send_alert(config(url), {"type": "t"}, sleep=Sleeps())
    assert hook.calls == []


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after_s("7", 0.0) == 7.0
    assert retry_after_s("-3", 0.0) == 0.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", 1445412480.0) == 10.0
    assert retry_after_s("soon", 0.0) is None
    assert retry_after_s(None, 0.0) is None
