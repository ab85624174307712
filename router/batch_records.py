"""Batches of the Batch API (``/v1/batches``): the Batch object, the kept record, and the store interface.

The embedded store is ``router.batch_store`` (files beside the Files API's);
the production one ``router.batch_store_postgres``: a table of records
(``update`` as ``SELECT ... FOR UPDATE`` and a write in one transaction,
``active`` as an index on the unfinished statuses) and one of result lines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Literal, Protocol

import msgspec

from core.errors import GatewayError

Status = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"]
# A batch in one of these is the runner's to start, resume or finish.
ACTIVE: frozenset[str] = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
# The two files a batch writes as it goes: successful responses, and the requests that failed.
Part = Literal["output", "error"]


class BatchStoreUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "batch_store_unavailable"
    retryable = True


class BatchError(msgspec.Struct):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(msgspec.Struct):
    data: list[BatchError]
    object: str = "list"


class RequestCounts(msgspec.Struct):
    total: int = 0
    completed: int = 0
    failed: int = 0


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int = 0


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class BatchUsage(msgspec.Struct):
    """Tokens of the batch's completed requests, summed (OpenAI's ``usage`` of a Batch)."""

    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)
    total_tokens: int = 0

    def add(self, other: BatchUsage) -> None:
        self.input_tokens += other.input_tokens
        self.input_tokens_details.cached_tokens += other.input_tokens_details.cached_tokens
        self.output_tokens += other.output_tokens
        self.output_tokens_details.reasoning_tokens += other.output_tokens_details.reasoning_tokens
        self.total_tokens += other.total_tokens

    def copy(self) -> BatchUsage:
        return BatchUsage(
            self.input_tokens, InputTokensDetails(self.input_tokens_details.cached_tokens), self.output_tokens,
            OutputTokensDetails(self.output_tokens_details.reasoning_tokens), self.total_tokens,
        )  # fmt: skip


class Batch(msgspec.Struct, kw_only=True):
    """OpenAI's Batch object, as the SDK parses it."""

    id: str
    object: str = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: Status
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = msgspec.field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None
    # The alias every request of the input file names (None until validated, or when they name several).
    model: str | None = None
    usage: BatchUsage | None = None


class NativeState(msgspec.Struct, kw_only=True):
    """A batch passed through to its deployment's own Batch API (``router.batch_native``): what was done upstream."""

    deployment: str
    # The budget reservation held for the batch's worst case (None: nothing to hold).
    reservation_id: str | None = None
    upstream_file_id: str | None = None
    upstream_batch_id: str | None = None
    upstream_status: str | None = None
    # The cancel was forwarded upstream (a client's cancel, or the creator's key revoked).
    cancel_sent: bool = False
    # Why the gateway cancelled it upstream when no client asked: "revoked".
    stop: str | None = None


class BatchRecord(msgspec.Struct, kw_only=True):
    """A batch as kept: the object clients see, and whose requests it runs as."""

    tenant: str
    # The creator's key: the batch runs as that key, and stops once it is revoked.
    key_id: str
    created_ns: int  # the order of listing
    # Output and error files expire this long after they are written (None: kept until deleted).
    output_expires_after_s: int | None = None
    batch: Batch
    # Set when the batch runs at its deployment's upstream rather than in the gateway.
    native: NativeState | None = None


class BatchStore(Protocol):
    """Every call names the tenant; another tenant's batch is as absent as one that never existed."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def create(self, record: BatchRecord) -> None: ...

    async def get(self, tenant: str, batch_id: str) -> BatchRecord | None: ...

    async def page(self, tenant: str, *, after: str | None, limit: int) -> tuple[list[BatchRecord], bool]:
        """A page of the tenant's batches, newest first, after the batch ``after``; and whether more follow."""
        ...

    async def update(self, tenant: str, batch_id: str, change: Callable[[BatchRecord], BatchRecord]) -> BatchRecord | None:
        """Apply ``change`` to the record atomically (against every writer, in any process); the record as kept after it."""
        ...

    async def active(self) -> list[tuple[str, str]]:
        """(tenant, batch id) of every batch with a status in ``ACTIVE``."""
        ...

    async def append(self, tenant: str, batch_id: str, part: Part, lines: bytes) -> None:
        """Add whole JSONL lines to a part; lines cut short by a crash are skipped when read."""
        ...

    def read(self, tenant: str, batch_id: str, part: Part) -> AsyncIterator[bytes]:
        """A part's bytes so far, in chunks (nothing when it has none)."""
        ...

    async def drop_parts(self, tenant: str, batch_id: str) -> None:
        """Forget both parts: their lines are in the batch's files now."""
        ...
