"""The expiry sweep's rounds (bounded batches, the metric, the log line) and its key in the config."""

from __future__ import annotations

import asyncio
import logging

import msgspec
import pytest

from core.config import Config, ConfigError
from core.config_check import decode_config
from router.metrics import Metrics
from router.responses_expiry import ResponseSweeper
from router.responses_records import ResponseStoreUnavailable, Retention, StoredResponse
from router.responses_store import SQLiteResponseStore

DAY = 86_400
EPOCH = 1_700_000_000
SECRET_TEXT = "my card is 4111 1111 1111 1111"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FailingOnce(SQLiteResponseStore):
    """A store whose first sweep finds the database down."""

    failed = False

    async def sweep(self, limit: int) -> int:
        if not self.failed:
            self.failed = True
            raise ResponseStoreUnavailable("down", retry_after=1)
        return await super().sweep(limit)


def record(n: int, created_at: int) -> StoredResponse:
    return StoredResponse(
        id=f"resp_{n}", tenant=f"tenant-{n % 2}", created_at=created_at,
        response=b'{"note":"%s"}' % SECRET_TEXT.encode(), input_items=b"[]", conversation=b"[]",
    )  # fmt: skip


def expired_total(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("sluicegate_responses_expired_total")
    return 0.0 if value is None else value


async def filled(store: SQLiteResponseStore, expired: int, young: int) -> None:
    await store.start()
    for n in range(expired):
        await store.put(record(n, EPOCH))
    for n in range(expired, expired + young):
        await store.put(record(n, EPOCH + 40 * DAY))


async def test_a_round_deletes_in_batches_up_to_its_bound(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(EPOCH + 41 * DAY)
    store = SQLiteResponseStore(":memory:", Retention(30, clock))
    await filled(store, expired=7, young=3)
    metrics = Metrics()
    sweeper = ResponseSweeper(store, metrics, batch=2, max_batches=3)
    with caplog.at_level(logging.INFO, logger="sluicegate.responses"):
        assert await sweeper.sweep() == 6, "three batches of two, then the round ends"
        assert await sweeper.sweep() == 1
        assert await sweeper.sweep() == 0
    assert expired_total(metrics) == 7
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["deleted 6 expired stored responses", "deleted 1 expired stored responses"]
    assert not any("resp_" in line or "tenant-" in line or "4111" in line for line in lines)
    for n in range(7, 10):
        assert await store.get(f"tenant-{n % 2}", f"resp_{n}") is not None
    await store.close()


async def test_the_task_sweeps_every_interval_and_outlives_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(EPOCH + 41 * DAY)
    store = FailingOnce(":memory:", Retention(30, clock))
    await filled(store, expired=3, young=1)
    metrics = Metrics()
    sweeper = ResponseSweeper(store, metrics, interval_s=0.01, jitter=lambda: 0.0)
    with caplog.at_level(logging.INFO, logger="sluicegate.responses"):
        sweeper.start()
        for _ in range(200):
            if expired_total(metrics) == 3:
                break
            await asyncio.sleep(0.01)
        await sweeper.close()
    assert store.failed and expired_total(metrics) == 3
    assert "expired stored responses were not swept: ResponseStoreUnavailable" in [r.getMessage() for r in caplog.records]
    clock.now = EPOCH + 71 * DAY  # the young one expires now, but the task is gone
    await asyncio.sleep(0.05)
    assert expired_total(metrics) == 3
    await store.close()


async def test_closing_a_sweeper_that_never_started_is_fine() -> None:
    await ResponseSweeper(SQLiteResponseStore(":memory:"), Metrics()).close()


def test_the_retention_key_is_checked_and_named() -> None:
    assert Config().state.responses_retention_days == 30
    assert msgspec.convert({"state": {"responses_retention_days": 0}}, Config).state.responses_retention_days == 0
    for bad in (b"-1", b"1.5", b"null", b"100000"):
        with pytest.raises(ConfigError, match=r"gateway\.yaml.*`state\.responses_retention_days`"):
            decode_config(b"state:\n  responses_retention_days: " + bad + b"\n", "gateway.yaml")
