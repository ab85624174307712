"""How a batch's status moves: pure functions from a record to the next, one per event.

validating --> in_progress --> finalizing --> completed
validating --> failed (a bad input file, or its key revoked)
in_progress --> failed (its key revoked) | expired (the 24 h window ran out)
validating | in_progress --> cancelling --> cancelled

Each takes the record as kept now (the store applies it under its lock), so
a cancel written by any replica between two of the runner's writes survives.
"""

from __future__ import annotations

import secrets

import msgspec
from msgspec.structs import replace

from core.errors import GatewayError
from router.batch_records import ACTIVE, Batch, BatchError, BatchErrors, BatchRecord, BatchUsage, RequestCounts

WINDOW_S = 24 * 3600
CANCELLABLE = frozenset({"validating", "in_progress"})


class BatchConflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "batch_not_cancellable"


def new_record(
    tenant: str, key_id: str, *, endpoint: str, input_file_id: str, metadata: dict[str, str] | None,
    output_expires_after_s: int | None, now: float, created_ns: int,
) -> BatchRecord:  # fmt: skip
    batch = Batch(
        id=f"batch_{secrets.token_hex(12)}",
        endpoint=endpoint,
        input_file_id=input_file_id,
        completion_window="24h",
        status="validating",
        created_at=int(now),
        expires_at=int(now) + WINDOW_S,
        metadata=metadata,
    )
    return BatchRecord(tenant=tenant, key_id=key_id, created_ns=created_ns, output_expires_after_s=output_expires_after_s, batch=batch)


def _with(record: BatchRecord, **changes: object) -> BatchRecord:
    return replace(record, batch=replace(record.batch, **changes))


def validated(record: BatchRecord, total: int, now: float, model: str | None = None) -> BatchRecord:
    """The input file is sound: run it (unless a cancel came first); ``model``: the alias all its lines name."""
    batch = record.batch
    start = {"request_counts": RequestCounts(total=total), "model": model, "usage": BatchUsage()}
    if batch.status == "cancelling":
        return _with(record, status="cancelled", cancelled_at=int(now), **start)
    if batch.status != "validating":
        return record
    return _with(record, status="in_progress", in_progress_at=int(now), **start)


def failed(
    record: BatchRecord, errors: list[BatchError], now: float, counts: RequestCounts | None = None,
    files: tuple[str | None, str | None] = (None, None), usage: BatchUsage | None = None,
) -> BatchRecord:  # fmt: skip
    """A bad input file (``errors`` name its lines), or a run stopped short (its key revoked): with what it wrote."""
    changes: dict[str, object] = {"status": "failed", "failed_at": int(now), "errors": BatchErrors(data=errors)}
    if counts is not None:
        changes["request_counts"] = counts
    if usage is not None:
        changes["usage"] = usage
    changes["output_file_id"], changes["error_file_id"] = files
    return _with(record, **changes)


def cancel_requested(record: BatchRecord, now: float) -> BatchRecord:
    status = record.batch.status
    if status in ("cancelling", "cancelled"):
        return record
    if status not in CANCELLABLE:
        raise BatchConflict(f"Cannot cancel a batch with status '{status}'.")
    return _with(record, status="cancelling", cancelling_at=int(now))


def counted(record: BatchRecord, counts: RequestCounts, usage: BatchUsage | None = None) -> BatchRecord:
    """Progress as the runner goes; the status is left as it is (a cancel may have come in)."""
    if record.batch.status not in ACTIVE:
        return record
    if usage is None:
        return _with(record, request_counts=counts)
    return _with(record, request_counts=counts, usage=usage)


def finalizing(record: BatchRecord, now: float) -> BatchRecord:
    if record.batch.status != "in_progress":
        return record
    return _with(record, status="finalizing", finalizing_at=int(now))


def finished(
    record: BatchRecord, counts: RequestCounts, files: tuple[str | None, str | None], now: float, *, ran_out: bool,
    usage: BatchUsage | None = None,
) -> BatchRecord:  # fmt: skip
    """The end of a run: completed; cancelled when a cancel stopped it, expired when the window did (``ran_out``)."""
    status = record.batch.status
    output_file_id, error_file_id = files
    changes: dict[str, object] = {"request_counts": counts, "output_file_id": output_file_id, "error_file_id": error_file_id}
    if usage is not None:
        changes["usage"] = usage
    if status == "cancelling":
        changes.update(status="cancelled", cancelled_at=int(now))
    elif ran_out:
        changes.update(status="expired", expired_at=int(now))
    else:
        changes.update(status="completed", completed_at=int(now))
    return _with(record, **changes)


def expired(record: BatchRecord, now: float) -> bool:
    expires_at = record.batch.expires_at
    return expires_at is not None and now >= expires_at


def public(record: BatchRecord) -> bytes:
    return msgspec.json.encode(record.batch)
