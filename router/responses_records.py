"""What a response store keeps and promises: one record, one interface, one error.

The embedded store and the open function are in ``router.responses_store``,
the production one in ``router.responses_store_postgres``; both implement
``ResponseStore`` and pass the same contract suite. A store is given a
``Retention``: an expired response is as absent as a missing one, and
``sweep`` removes expired rows in bounded batches (``router.responses_expiry``
runs it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import msgspec

from core.errors import GatewayError


class StoredResponse(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant: str
    created_at: int
    response: bytes  # JSON: the Response object, as retrieved
    input_items: bytes  # JSON: this request's input, as canonical items
    conversation: bytes  # JSON: the items a continuation prepends (earlier ones, the input, the output)


class Retention:
    """How long a stored response lives: ``days`` after its ``created_at`` (0: for ever), by ``clock``.

    Every store asks this on each read and delete, so a response is gone the
    moment it expires, whether or not a sweep has removed its row yet.
    """

    def __init__(self, days: int = 0, clock: Callable[[], float] = time.time) -> None:
        self.seconds = days * 86_400
        self.clock = clock

    def cutoff(self) -> float | None:
        """Responses created at or before this (epoch seconds) have expired; None when none ever do."""
        if not self.seconds:
            return None
        return self.clock() - self.seconds


class ResponseStoreUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "store_unavailable"


class ResponseStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def put(self, record: StoredResponse) -> None:
        """Keep ``record`` (an id already kept for its tenant is left as it is)."""
        ...

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        """The tenant's response of that id; None when missing, expired or another tenant's."""
        ...

    async def delete(self, tenant: str, response_id: str) -> bool:
        """Whether the tenant had an unexpired response of that id (now gone)."""
        ...

    async def sweep(self, limit: int) -> int:
        """Delete at most ``limit`` expired responses, of any tenant; how many went."""
        ...
