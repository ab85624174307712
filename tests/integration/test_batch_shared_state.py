"""Batches on production state: files in S3 (moto's server), records, result lines and claims in PostgreSQL.

Real gateways against the fake upstream, as tests/integration/test_batch_runner.py
runs them on the local directory: a batch runs end to end, two replicas that
share nothing but S3 and PostgreSQL run each line once, and a batch resumed
by another replica reports the usage of every completed request.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from bench.fake_upstream import FakeUpstream
from core.config import Config
from router.auth import hash_api_key
from router.batch_records import BatchRecord, BatchStoreUnavailable, Part
from router.batch_state import new_record
from router.files_store import FileStoreUnavailable
from router.files_store_s3 import S3FileStore
from router.gateway import Gateway
from router.state_batches import open_claims
from tests.fakes.s3_server import S3Server, start_s3_server

ADMIN_DSN = os.environ.get("SLUICEGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
KEY = "sk-batch-shared-0123456789"
TERMINAL = {"completed", "failed", "cancelled", "expired"}


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def pg_dsn() -> AsyncIterator[str]:
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        pytest.skip("PostgreSQL is not reachable")
    name = f"sg_batch_shared_{secrets.token_hex(6)}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture
def shared_config(fake_upstream: FakeUpstream, s3_server: S3Server, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """One config for every replica of a test; each replica's local paths would differ on another host, and none is used."""
    monkeypatch.setenv("SLUICEGATE_TEST_S3_SECRET", s3_server.secret_access_key)
    slow = {"extra_headers": {"x-fake-delay-ms": "150"}}
    raw = {
        "server": {"log_level": "warning"},
        "deployments": [
            {"name": "fast", "provider": "openai", "base_url": fake_upstream.url, "model": "fake-normal"},
            {"name": "slow", "provider": "openai", "base_url": fake_upstream.url, "model": "fake-slow", "options": slow},
        ],
        "models": [{"alias": "fast", "deployments": ["fast"]}, {"alias": "slow", "deployments": ["slow"]}],
        "tenants": [{"id": "t", "keys": [{"id": "k", "hash": hash_api_key(KEY)}]}],
        "state": {
            "files": "s3", "s3": s3_server.state(prefix=f"gw-{secrets.token_hex(4)}"), "batches": "postgres", "postgres_dsn": pg_dsn,
            "files_path": str(tmp_path / "unused"), "ledger_path": str(tmp_path / "ledger.sqlite"),
            "ledger_spool_path": str(tmp_path / "spool"),
        },
        "batches": {"poll_interval_s": 0.1, "max_concurrent": 2, "lease_s": 2},
    }  # fmt: skip
    return msgspec.convert(raw, Config)


def _lines(n: int, alias: str, marker: str) -> bytes:
    body = {"model": alias, "messages": [{"role": "user", "content": f"{marker} hello"}]}
    return b"".join(
        json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}).encode() + b"\n" for i in range(n)
    )


async def _started(config: Config) -> Gateway:
    gateway = Gateway(config)
    await gateway.start()
    return gateway


async def _submit(gateway: Gateway, data: bytes) -> str:
    async def content() -> AsyncIterator[bytes]:
        yield data

    made = await gateway.files.create("t", filename="in.jsonl", purpose="batch", content=content())
    record = new_record(
        "t", "k", endpoint="/v1/chat/completions", input_file_id=made.id, metadata=None, output_expires_after_s=None,
        now=time.time(), created_ns=time.time_ns(),
    )  # fmt: skip
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


def _summed(results: list[dict[str, Any]]) -> tuple[int, int]:
    usages = [r["response"]["body"]["usage"] for r in results]
    return sum(u["prompt_tokens"] for u in usages), sum(u["completion_tokens"] for u in usages)


async def test_a_batch_runs_end_to_end_on_s3_and_postgres(shared_config: Config, s3_server: S3Server, pg_dsn: str) -> None:
    gateway = await _started(shared_config)
    try:
        assert isinstance(gateway.files, S3FileStore)
        batch_id = await _submit(gateway, _lines(12, "fast", "shared-e2e"))
        record = await _until(gateway, batch_id)
        done = await _results(gateway, record.batch.output_file_id)
        output = await gateway.files.get("t", record.batch.output_file_id or "")
    finally:
        await gateway.stop()
    batch = record.batch
    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (12, 12, 0)
    assert sorted(r["custom_id"] for r in done) == sorted(f"c{i}" for i in range(12))
    assert output is not None and output.purpose == "batch_output"
    # the Batch object's usage is the sum over its completed requests, and its model the alias they name
    given, made = _summed(done)
    assert batch.model == "fast" and batch.usage is not None and given > 0 and made > 0
    assert (batch.usage.input_tokens, batch.usage.output_tokens, batch.usage.total_tokens) == (given, made, given + made)
    # the files are objects in the bucket, the result lines gone from the database once written
    prefix = shared_config.state.s3.prefix if shared_config.state.s3 else ""
    assert any(key.endswith(f"/meta/{batch.output_file_id}.json") for key in s3_server.keys(prefix))
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM batch_parts WHERE batch_id = $1", batch_id) == 0
        row = await conn.fetchrow("SELECT status, claimed_by FROM batches WHERE id = $1", batch_id)
    finally:
        await conn.close()
    assert row is not None and (row["status"], row["claimed_by"]) == ("completed", None)


async def test_two_replicas_on_shared_state_run_each_line_once(shared_config: Config, fake_upstream: FakeUpstream) -> None:
    a, b = await _started(shared_config), await _started(shared_config)
    markers = [f"shared-twin-{secrets.token_hex(4)}" for _ in range(3)]
    try:
        batch_ids = [await _submit(gw, _lines(8, "slow", marker)) for gw, marker in zip((a, b, a), markers)]
        b.batch_runner.wake()
        records = [await _until(b, batch_id) for batch_id in batch_ids]
    finally:
        await asyncio.gather(a.stop(), b.stop())
    assert [r.batch.status for r in records] == ["completed"] * 3
    sent = [json.dumps(r["json"]) for r in fake_upstream.requests]
    for marker in markers:
        assert sum(marker in body for body in sent) == 8


async def test_a_batch_resumed_by_another_replica_reports_all_its_usage(shared_config: Config) -> None:
    first = await _started(shared_config)
    batch_id = await _submit(first, _lines(16, "slow", "shared-resume"))
    await _until(first, batch_id, lambda r: r.batch.request_counts.completed >= 3)
    await first.stop()  # requests in flight finish and are kept; its lease is given back
    stopped = await first.batches.get("t", batch_id)
    assert stopped is not None and stopped.batch.status == "in_progress"
    assert stopped.batch.usage is not None and stopped.batch.usage.total_tokens > 0
    second = await _started(shared_config)
    try:
        record = await _until(second, batch_id)
        done = await _results(second, record.batch.output_file_id)
    finally:
        await second.stop()
    assert record.batch.status == "completed" and record.batch.request_counts.completed == 16
    assert sorted(r["custom_id"] for r in done) == sorted(f"c{i}" for i in range(16))  # each once
    given, made = _summed(done)
    usage = record.batch.usage
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (given, made)


async def test_the_runner_waits_out_a_lease_another_replica_holds(shared_config: Config) -> None:
    holder = Gateway(shared_config)  # never started: it only holds the lease, as a replica that died would
    claims = open_claims(shared_config, holder.batches)
    runner = Gateway(shared_config)
    batch_id = await _submit(runner, _lines(2, "fast", "shared-lease"))
    assert await claims.claim(batch_id)
    await runner.start()
    try:
        await asyncio.sleep(0.5)
        waiting = await runner.batches.get("t", batch_id)
        assert waiting is not None and waiting.batch.status == "validating", "claimed elsewhere: not run here"
        record = await _until(runner, batch_id, timeout_s=10)  # the lease (2 s) lapses unrenewed
    finally:
        await runner.stop()
        await holder.batches.close()
    assert record.batch.status == "completed"


async def test_a_file_store_outage_pauses_a_batch_and_never_fails_it(shared_config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = Gateway(shared_config)
    batch_id = await _submit(gateway, _lines(3, "fast", "shared-outage"))
    real = gateway.files.content
    outages = [5]  # more looks in a row than a run may crash before its batch is failed

    def flaky(tenant: str, file_id: str) -> AsyncIterator[bytes]:
        if outages[0] > 0:
            outages[0] -= 1
            raise FileStoreUnavailable("The file store is unavailable; try again shortly.")
        return real(tenant, file_id)

    monkeypatch.setattr(gateway.files, "content", flaky)
    await gateway.start()
    try:
        record = await _until(gateway, batch_id)
    finally:
        await gateway.stop()
    assert outages == [0] and record.batch.status == "completed" and record.batch.request_counts.completed == 3


async def test_result_lines_whose_append_failed_are_written_later_not_lost(shared_config: Config) -> None:
    gateway = Gateway(shared_config)
    real = gateway.batches.append
    failures: list[int] = []

    async def flaky(tenant: str, batch_id: str, part: Part, lines: bytes) -> None:
        if not failures:  # the first append: a checkpoint's, mid-run
            failures.append(lines.count(b"\n"))
            raise BatchStoreUnavailable("The batch store is unavailable; try again shortly.")
        await real(tenant, batch_id, part, lines)

    gateway.batches.append = flaky  # type: ignore[method-assign]
    await gateway.start()
    try:
        batch_id = await _submit(gateway, _lines(10, "slow", "shared-append"))
        record = await _until(gateway, batch_id)
        done = await _results(gateway, record.batch.output_file_id)
    finally:
        await gateway.stop()
    assert failures and failures[0] >= 1
    assert record.batch.status == "completed" and record.batch.request_counts.completed == 10
    assert sorted(r["custom_id"] for r in done) == sorted(f"c{i}" for i in range(10))


@pytest.fixture(autouse=True)
def _no_leftover_requests(fake_upstream: FakeUpstream) -> None:
    fake_upstream.requests.clear()
