"""What the ledger stores and where it goes: the row, the store Protocol, and spool lines.

Shared by the batching ledger (``budgets.ledger``), its spool
(``budgets.ledger_spool``) and the stores, none of which needs another's code.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import msgspec

from budgets.ledger_query import UsageQuery, UsageRow, UsageSource, from_epoch_us, to_epoch_us


class LedgerRow(msgspec.Struct):
    """What one request cost. Money in pico-USD (1e-12 USD), an exact integer.

    The gateway builds rows positionally (keywords cost several times more
    per row). The first twelve fields are the ones FinOps queries filter,
    group and sum on, in the embedded table's column order; the rest follow,
    newest last. Fields added since ``arm`` have a default, so that rows built
    without them (older spools, tools) stay valid."""

    request_id: str
    started_us: int  # UTC, microseconds since the epoch
    tenant: str
    key_id: str
    model: str  # the alias the client asked for
    deployment: str
    provider: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost: int
    status: int  # HTTP status; 499 when the client went away
    finished_us: int
    latency_ms: float
    ttft_ms: float | None
    error: str | None  # an error class or code, never a message that could hold user data
    route_reason: str | None
    pii_entities: dict[str, int]  # counts by entity type, never the values
    trace_id: str | None
    stream: bool
    config_version: int  # the live config the request ran on; 0 for rows from before versions
    arm: str | None  # its canary arm ("stable", "candidate", "shadow"); None outside a canary
    batch_id: str | None = None  # the /v1/batches batch it ran in, billed at the batch price; None when interactive
    cache: str | None = None  # the response cache: "hit", "miss" or "bypass"; None when the alias has no cache
    cache_entry: str | None = None  # the entry (a prefix of its key's digest, revealing nothing); None unless hit or stored
    saved: int = 0  # pico-USD: on a hit, what the stored answer cost when it was first served
    guardrail: str | None = None  # the guardrail that blocked the request or cut its stream (its config name); None when none did

    @property
    def started_at(self) -> datetime:
        return from_epoch_us(self.started_us)

    @property
    def finished_at(self) -> datetime:
        return from_epoch_us(self.finished_us)


class LedgerStore(Protocol):
    """Where batches end up; each write is one transaction, duplicates ignored."""

    async def open(self) -> None: ...
    async def close(self, timeout_s: float | None = None) -> None:
        """Release connections within ``timeout_s`` (None: the store's own deadline)."""
        ...

    async def write(self, rows: Sequence[LedgerRow]) -> None: ...
    async def usage(self, query: UsageQuery, source: UsageSource = "auto") -> list[UsageRow]:
        """A usage report, from the rollups where they answer (``"auto"``) or from the rows (``"raw"``): the same result."""
        ...

    async def rows(self, tenant: str | None, start: datetime, end: datetime, limit: int) -> list[LedgerRow]: ...
    async def ping(self) -> bool: ...
    def refuses(self, exc: Exception) -> bool:
        """True when a write failed because of what the rows hold, so retrying cannot help."""
        ...


_row_decoder = msgspec.json.Decoder(LedgerRow)
_dict_decoder = msgspec.json.Decoder(dict[str, Any])
# Fields added since rows were first spooled, and what a row spooled before them means.
_ADDED = {"config_version": 0, "arm": None}


def decode_spooled(line: bytes) -> LedgerRow:
    """One spool line, including lines spooled by earlier releases.

    Rows spooled before times were integers carry ISO datetimes instead; rows
    spooled before config versions lack ``config_version`` and ``arm``.
    """
    try:
        return _row_decoder.decode(line)
    except msgspec.ValidationError:
        data = _dict_decoder.decode(line)
        for name in ("started", "finished"):
            dated = data.pop(f"{name}_at", None)
            if isinstance(dated, str) and f"{name}_us" not in data:
                try:
                    data[f"{name}_us"] = to_epoch_us(datetime.fromisoformat(dated))
                except ValueError:
                    raise msgspec.ValidationError(f"unreadable {name}_at") from None
        for name, default in _ADDED.items():
            data.setdefault(name, default)
        return msgspec.convert(data, LedgerRow)
