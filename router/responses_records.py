"""What a response store keeps and promises: one record, one interface, one error.

The embedded store and the open function are in ``router.responses_store``,
the production one in ``router.responses_store_postgres``; both implement
``ResponseStore`` and pass the same contract suite.
"""

from __future__ import annotations

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
        """The tenant's response of that id; None when missing or another tenant's."""
        ...

    async def delete(self, tenant: str, response_id: str) -> bool:
        """Whether the tenant had a response of that id (now gone)."""
        ...
