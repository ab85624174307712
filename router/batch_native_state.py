"""How a passed-through batch's record moves with its upstream batch: pure functions, one per event.

The store applies each under its lock (``BatchStore.update``), so a cancel a
client sends on any replica between two polls is kept.
"""

from __future__ import annotations

from msgspec.structs import replace

from router.batch_native_lines import gateway_status
from router.batch_records import BatchError, BatchRecord, BatchUsage, RequestCounts
from router.batch_state import failed, finished
from router.batch_validate import MAX_ERRORS
from serving.openai_batches import UpstreamBatch

REVOKED = BatchError(code="credential_revoked", message="The API key that created this batch was revoked, or its tenant disabled.")


def native_changed(record: BatchRecord, **changes: object) -> BatchRecord:
    assert record.native is not None
    return replace(record, native=replace(record.native, **changes))


def progressed(record: BatchRecord, upstream: UpstreamBatch, now: float) -> BatchRecord:
    """The upstream's counts and status, while it runs; a cancel that came in is kept."""
    record = native_changed(record, upstream_status=upstream.status)
    batch = record.batch
    if batch.status not in ("in_progress", "finalizing"):
        return record
    status = gateway_status(upstream.status) or batch.status
    counts = upstream.request_counts
    changes: dict[str, object] = {}
    if counts is not None:
        changes["request_counts"] = RequestCounts(total=batch.request_counts.total, completed=counts.completed, failed=counts.failed)
    if status == "finalizing" and batch.status == "in_progress":
        changes.update(status="finalizing", finalizing_at=int(now))
    return replace(record, batch=replace(batch, **changes)) if changes else record


def final_record(
    record: BatchRecord, upstream: UpstreamBatch, counts: RequestCounts, files: tuple[str | None, str | None], now: float,
    usage: BatchUsage,
) -> BatchRecord:  # fmt: skip
    """The gateway's final status for an upstream batch that has ended."""
    native = record.native
    if native is not None and native.stop == "revoked":
        return failed(record, [REVOKED], now, counts, files, usage)
    if upstream.status == "failed":
        data = (upstream.errors.data if upstream.errors is not None else [])[:MAX_ERRORS]
        # The upstream's codes and line numbers; its messages may quote the lines.
        errors = [BatchError(code=e.code or "upstream_failed", message="The upstream refused this line.", line=e.line) for e in data]
        errors = errors or [BatchError(code="upstream_failed", message="The upstream failed this batch.")]
        return failed(record, errors, now, counts, files, usage)
    if upstream.status == "cancelled" and record.batch.status in ("in_progress", "finalizing"):
        record = replace(record, batch=replace(record.batch, status="cancelling", cancelling_at=int(now)))
    return finished(record, counts, files, now, ran_out=upstream.status == "expired", usage=usage)
