"""A batch's status moves only as OpenAI's does, and the embedded store keeps every writer's change."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from router.batch_records import BatchError, BatchRecord, RequestCounts
from router.batch_state import (
    WINDOW_S,
    BatchConflict,
    cancel_requested,
    counted,
    expired,
    failed,
    finalizing,
    finished,
    new_record,
    public,
    validated,
)
from router.batch_store import LocalBatchStore

T0 = 1_700_000_000.0
COUNTS = RequestCounts(total=3, completed=2, failed=1)
FILES = ("file-out", "file-err")


def record(tenant: str = "acme", created_ns: int = 1) -> BatchRecord:
    return new_record(
        tenant, "key-1", endpoint="/v1/chat/completions", input_file_id="file-in", metadata={"k": "v"},
        output_expires_after_s=None, now=T0, created_ns=created_ns,
    )  # fmt: skip


def test_a_new_batch_is_validating_for_a_day() -> None:
    batch = record().batch
    assert (batch.status, batch.created_at, batch.expires_at, batch.completion_window) == ("validating", int(T0), int(T0) + WINDOW_S, "24h")
    assert batch.id.startswith("batch_") and batch.id != record().batch.id
    shown = msgspec.json.decode(public(record()))
    assert shown["object"] == "batch" and shown["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert "tenant" not in shown and "key_id" not in shown


def test_the_happy_path() -> None:
    r = validated(record(), 3, T0 + 1)
    assert (r.batch.status, r.batch.in_progress_at, r.batch.request_counts.total) == ("in_progress", int(T0) + 1, 3)
    r = counted(r, RequestCounts(3, 1, 0))
    assert r.batch.request_counts.completed == 1
    r = finalizing(r, T0 + 2)
    assert (r.batch.status, r.batch.finalizing_at) == ("finalizing", int(T0) + 2)
    r = finished(r, COUNTS, FILES, T0 + 3, ran_out=False)
    b = r.batch
    assert (b.status, b.completed_at, b.output_file_id, b.error_file_id, b.request_counts) == ("completed", int(T0) + 3, *FILES, COUNTS)
    # finished is final: progress no longer changes it
    assert counted(r, RequestCounts(3, 3, 0)) is r


def test_a_bad_file_fails_with_its_errors() -> None:
    errors = [BatchError(code="invalid_json_line", message="bad", line=2)]
    r = failed(record(), errors, T0 + 1, RequestCounts(total=4))
    assert (r.batch.status, r.batch.failed_at, r.batch.errors.data if r.batch.errors else None) == ("failed", int(T0) + 1, errors)
    assert r.batch.in_progress_at is None


def test_cancel_from_validating_or_in_progress_only() -> None:
    r = cancel_requested(record(), T0 + 1)
    assert (r.batch.status, r.batch.cancelling_at) == ("cancelling", int(T0) + 1)
    assert cancel_requested(r, T0 + 5) is r  # asked twice: no change
    # a cancel that came during validation wins over it
    gone = validated(r, 3, T0 + 2)
    assert (gone.batch.status, gone.batch.cancelled_at) == ("cancelled", int(T0) + 2)
    assert cancel_requested(gone, T0 + 3) is gone
    running = cancel_requested(validated(record(), 3, T0), T0 + 1)
    assert finalizing(running, T0 + 2) is running  # not while cancelling
    ended = finished(running, COUNTS, FILES, T0 + 3, ran_out=False)
    assert (ended.batch.status, ended.batch.cancelled_at, ended.batch.output_file_id) == ("cancelled", int(T0) + 3, "file-out")
    done = finished(validated(record(), 3, T0), COUNTS, FILES, T0 + 3, ran_out=False)
    with pytest.raises(BatchConflict):
        cancel_requested(done, T0 + 4)


def test_the_window_running_out_expires_the_batch() -> None:
    r = validated(record(), 3, T0)
    assert not expired(r, T0 + WINDOW_S - 1) and expired(r, T0 + WINDOW_S)
    ended = finished(r, COUNTS, FILES, T0 + WINDOW_S, ran_out=True)
    assert (ended.batch.status, ended.batch.expired_at) == ("expired", int(T0) + WINDOW_S)


async def test_the_store_keeps_a_tenants_batches_apart_and_pages_newest_first(tmp_path: Path) -> None:
    store = LocalBatchStore(str(tmp_path))
    mine = [record("acme", created_ns=i) for i in range(3)]
    for r in mine:
        await store.create(r)
    await store.create(record("globex", created_ns=9))
    assert await store.get("acme", mine[0].batch.id) == mine[0]
    assert await store.get("globex", mine[0].batch.id) is None
    assert await store.update("globex", mine[0].batch.id, lambda r: cancel_requested(r, T0)) is None
    page, more = await store.page("acme", after=None, limit=2)
    assert [r.batch.id for r in page] == [mine[2].batch.id, mine[1].batch.id] and more
    page, more = await store.page("acme", after=page[-1].batch.id, limit=2)
    assert [r.batch.id for r in page] == [mine[0].batch.id] and not more
    for bad in ("../x", "batch_../../x", "file-1"):
        assert await store.get("acme", bad) is None


async def test_only_unfinished_batches_are_active(tmp_path: Path) -> None:
    store = LocalBatchStore(str(tmp_path))
    a, b = record(), record()
    await store.create(a)
    await store.create(b)
    assert sorted(await store.active()) == sorted([("acme", a.batch.id), ("acme", b.batch.id)])
    await store.update("acme", a.batch.id, lambda r: failed(r, [], T0))
    assert await store.active() == [("acme", b.batch.id)]


async def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    store = LocalBatchStore(str(tmp_path))
    r = record()
    await store.create(r)

    def bump(current: BatchRecord) -> BatchRecord:
        counts = current.batch.request_counts
        return counted(current, RequestCounts(counts.total, counts.completed + 1, counts.failed))

    await asyncio.gather(*(store.update("acme", r.batch.id, bump) for _ in range(20)))
    kept = await store.get("acme", r.batch.id)
    assert kept is not None and kept.batch.request_counts.completed == 20


async def test_result_lines_cut_short_by_a_crash_stay_on_a_line_of_their_own(tmp_path: Path) -> None:
    store = LocalBatchStore(str(tmp_path))
    r = record()
    await store.create(r)

    async def read() -> bytes:
        parts: AsyncIterator[bytes] = store.read("acme", r.batch.id, "output")
        return b"".join([chunk async for chunk in parts])

    assert await read() == b""
    await store.append("acme", r.batch.id, "output", b'{"custom_id":"a"}\n{"custom_id":"b"')  # a crash mid-line
    await store.append("acme", r.batch.id, "output", b'{"custom_id":"c"}\n')
    assert (await read()).split(b"\n") == [b'{"custom_id":"a"}', b'{"custom_id":"b"', b'{"custom_id":"c"}', b""]
    await store.drop_parts("acme", r.batch.id)
    assert await read() == b""
