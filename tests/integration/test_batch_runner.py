"""The batch runner in a real gateway against the fake upstream: window, budget, revoked key, restarts, two runners.

Batches are submitted through the stores, as the routes do; what is checked is
what the runner leaves: statuses, counts, the result lines, the budget spent.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from msgspec.structs import replace

from bench.fake_upstream import FakeUpstream
from budgets.accounting import budget_key
from core.config import BudgetConfig, Config
from router.auth import hash_api_key
from router.batch_claims import RedisClaims
from router.batch_records import BatchRecord
from router.batch_state import new_record
from router.gateway import Gateway

REDIS_URL = "redis://127.0.0.1:6379/0"
KEY = "sk-batch-runner-0123456789"
SLOW_MS = 150
TERMINAL = {"completed", "failed", "cancelled", "expired"}


def _config(upstream: str, tmp: Path, **tenant: Any) -> Config:
    slow = {"extra_headers": {"x-fake-delay-ms": str(SLOW_MS)}}
    raw = {
        "server": {"log_level": "warning"},
        "deployments": [
            {"name": "fast", "provider": "openai", "base_url": upstream, "model": "fake-normal",
             "price": {"input_per_mtok": 1_000_000, "output_per_mtok": 2_000_000}},
            {"name": "slow", "provider": "openai", "base_url": upstream, "model": "fake-slow", "options": slow},
        ],
        "models": [{"alias": "fast", "deployments": ["fast"]}, {"alias": "slow", "deployments": ["slow"]}],
        "tenants": [{"id": "t", "keys": [{"id": "k", "hash": hash_api_key(KEY)}], **tenant}],
        "state": {"files_path": str(tmp / "files"), "ledger_path": str(tmp / "ledger.sqlite"), "ledger_spool_path": str(tmp / "spool")},
        "batches": {"poll_interval_s": 0.1, "max_concurrent": 2},
    }  # fmt: skip
    return msgspec.convert(raw, Config)


async def _started(config: Config) -> Gateway:
    gateway = Gateway(config)
    await gateway.start()
    return gateway


def _lines(n: int, alias: str, marker: str) -> bytes:
    body = {"model": alias, "messages": [{"role": "user", "content": f"{marker} hello"}]}
    return b"".join(
        json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}).encode() + b"\n" for i in range(n)
    )


async def _submit(gateway: Gateway, data: bytes, expires_in: float | None = None) -> str:
    async def content() -> AsyncIterator[bytes]:
        yield data

    made = await gateway.files.create("t", filename="in.jsonl", purpose="batch", content=content())
    record = new_record(
        "t", "k", endpoint="/v1/chat/completions", input_file_id=made.id, metadata=None, output_expires_after_s=None,
        now=time.time(), created_ns=time.time_ns(),
    )  # fmt: skip
    if expires_in is not None:
        record = replace(record, batch=replace(record.batch, expires_at=int(time.time() + expires_in)))
    await gateway.batches.create(record)
    gateway.batch_runner.wake()
    return record.batch.id


async def _until(gateway: Gateway, batch_id: str, done: Any = lambda r: r.batch.status in TERMINAL, timeout_s: float = 30.0) -> BatchRecord:
    deadline = time.monotonic() + timeout_s
    while True:
        record = await gateway.batches.get("t", batch_id)
        assert record is not None
        if done(record) or time.monotonic() > deadline:
            return record
        await asyncio.sleep(0.05)


async def _results(gateway: Gateway, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    data = b"".join([chunk async for chunk in gateway.files.content("t", file_id)])
    return [json.loads(line) for line in data.splitlines()]


async def test_the_window_running_out_expires_the_rest(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    gateway = await _started(_config(fake_upstream.url, tmp_path))
    try:
        batch_id = await _submit(gateway, _lines(30, "slow", "expiry"), expires_in=1.0)
        record = await _until(gateway, batch_id)
    finally:
        await gateway.stop()
    batch = record.batch
    assert batch.status == "expired" and batch.expired_at is not None
    counts = batch.request_counts
    assert counts.total == 30 and counts.completed >= 1 and counts.completed + counts.failed == 30
    done, expired = await _results(gateway, batch.output_file_id), await _results(gateway, batch.error_file_id)
    assert len(done) == counts.completed and len(expired) == counts.failed
    assert all(e["response"] is None and e["error"]["code"] == "batch_expired" for e in expired)
    assert {r["custom_id"] for r in done + expired} == {f"c{i}" for i in range(30)}


async def test_a_spent_budget_fails_the_remaining_lines_and_is_never_overspent(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    budget = {"kind": "money", "period": "lifetime", "limit": 100}  # micro-USD: a handful of requests at the batch price
    gateway = await _started(_config(fake_upstream.url, tmp_path, budgets=[budget]))
    try:
        batch_id = await _submit(gateway, _lines(20, "fast", "budget"))
        record = await _until(gateway, batch_id)
        key, _ = budget_key("t:t", msgspec.convert(budget, BudgetConfig), datetime.now(UTC))
        spent, reserved = await gateway.counters.budget_state(key)
    finally:
        await gateway.stop()
    batch = record.batch
    assert batch.status == "completed"
    counts = batch.request_counts
    assert counts.completed >= 1 and counts.failed >= 1 and counts.completed + counts.failed == 20
    assert 0 < spent <= 100 * 10**6 and reserved == 0
    refused = await _results(gateway, batch.error_file_id)
    assert len(refused) == counts.failed
    for line in refused:
        assert line["response"]["status_code"] == 429
        assert line["response"]["body"]["error"]["code"] == "insufficient_quota"


async def test_a_revoked_key_stops_the_batch_with_what_it_did(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    gateway = await _started(_config(fake_upstream.url, tmp_path))
    try:
        batch_id = await _submit(gateway, _lines(30, "slow", "revoked"))
        await _until(gateway, batch_id, lambda r: r.batch.request_counts.completed >= 2)
        await gateway.tenants.revoke_key("t", "k", "test")
        record = await _until(gateway, batch_id)
    finally:
        await gateway.stop()
    batch = record.batch
    assert batch.status == "failed" and batch.errors is not None
    assert [e.code for e in batch.errors.data] == ["credential_revoked"]
    assert 2 <= batch.request_counts.completed < 30
    assert len(await _results(gateway, batch.output_file_id)) == batch.request_counts.completed


async def test_a_restart_resumes_the_batch_where_it_stopped(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    config = _config(fake_upstream.url, tmp_path)
    first = await _started(config)
    batch_id = await _submit(first, _lines(16, "slow", "restart"))
    await _until(first, batch_id, lambda r: r.batch.request_counts.completed >= 2)
    await first.stop()  # requests in flight finish and are kept
    stopped = await first.batches.get("t", batch_id)
    assert stopped is not None and stopped.batch.status == "in_progress"
    second = await _started(config)
    try:
        record = await _until(second, batch_id)
    finally:
        await second.stop()
    assert record.batch.status == "completed"
    assert (record.batch.request_counts.completed, record.batch.request_counts.failed) == (16, 0)
    ids = [r["custom_id"] for r in await _results(second, record.batch.output_file_id)]
    assert sorted(ids) == sorted(f"c{i}" for i in range(16))  # each once


async def test_two_runners_on_one_directory_run_each_line_once(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    config = _config(fake_upstream.url, tmp_path)
    a, b = await _started(config), await _started(config)
    markers = [f"twin-{secrets.token_hex(4)}" for _ in range(3)]
    try:
        batch_ids = [await _submit(gw, _lines(8, "slow", marker)) for gw, marker in zip((a, b, a), markers)]
        b.batch_runner.wake()
        records = [await _until(a, batch_id) for batch_id in batch_ids]
    finally:
        await asyncio.gather(a.stop(), b.stop())
    assert [r.batch.status for r in records] == ["completed"] * 3
    sent = [json.dumps(r["json"]) for r in fake_upstream.requests]
    for marker in markers:
        assert sum(marker in body for body in sent) == 8


async def test_redis_claims_are_held_by_one_replica_and_lapse() -> None:
    batch_id = f"batch_{secrets.token_hex(6)}"
    one, two = RedisClaims(REDIS_URL, ttl_s=1.0), RedisClaims(REDIS_URL, ttl_s=1.0)
    try:
        assert await one.claim(batch_id) and await one.claim(batch_id)  # taken, then renewed
        assert not await two.claim(batch_id)
        await one.release(batch_id, False)
        assert await two.claim(batch_id)
        await asyncio.sleep(1.2)  # two stopped renewing: the claim lapsed
        assert await one.claim(batch_id)
        await two.release(batch_id, True)  # not two's any more: left alone
        assert not await two.claim(batch_id)
    finally:
        await one.release(batch_id, True)
        await one.close()
        await two.close()


async def test_an_input_file_deleted_before_the_run_fails_the_batch(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    gateway = Gateway(_config(fake_upstream.url, tmp_path))  # not started: nothing runs the batch yet
    batch_id = await _submit(gateway, _lines(3, "fast", "deleted"))
    record = await gateway.batches.get("t", batch_id)
    assert record is not None and await gateway.files.delete("t", record.batch.input_file_id)
    await gateway.start()
    try:
        record = await _until(gateway, batch_id)
    finally:
        await gateway.stop()
    assert record.batch.status == "failed" and record.batch.errors is not None
    assert [e.code for e in record.batch.errors.data] == ["input_file_missing"]


async def test_a_batch_whose_run_keeps_failing_is_failed_not_retried_for_ever(
    fake_upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a defect")

    monkeypatch.setattr("router.batch_job.validate", broken)
    gateway = await _started(_config(fake_upstream.url, tmp_path))
    try:
        batch_id = await _submit(gateway, _lines(2, "fast", "crash"))
        record = await _until(gateway, batch_id)
    finally:
        await gateway.stop()
    assert record.batch.status == "failed" and record.batch.errors is not None
    assert [e.code for e in record.batch.errors.data] == ["internal_error"]


@pytest.fixture(autouse=True)
def _no_leftover_requests(fake_upstream: FakeUpstream) -> None:
    fake_upstream.requests.clear()
