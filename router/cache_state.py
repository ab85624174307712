"""What the response cache did for one request (``RequestContext.cache``): read by the response, billing and the ledger.

Set by ``router.cache_step`` for a request of an alias with a cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from core.config import Price
from core.config_cache import CacheConfig
from router.cache_store import CacheEntry

if TYPE_CHECKING:
    from policies.routing import Deployment

Result = Literal["hit", "miss", "bypass"]
# The short id of an entry that a ledger row names: enough to tell entries apart, nothing to find one by.
ENTRY_ID_CHARS: Final = 16


@dataclass(slots=True)
class CacheState:
    """What the cache did for one request (``RequestContext.cache``)."""

    result: Result
    # The alias's cache, and what a hit is billed at.
    config: CacheConfig
    price: Price
    # Set unless bypassed: who may see the entry, its key, and the deployment the key names.
    scope: str | None = None
    key: str | None = None
    keyed_on: Deployment | None = None
    # A hit: the entry replayed.
    entry: CacheEntry | None = None
    # A miss to store: the unary answer as the deployment sent it.
    body: bytes | None = None
    # The entry a ledger row names: the one replayed, or the one stored.
    entry_id: str | None = None
    # Semantic mode: the conversation's embedding and where it is filed (kept with a stored miss), and a hit's similarity.
    vector: list[float] | None = None
    partition: str | None = None
    similarity: float | None = None

    @property
    def header(self) -> bytes:
        return self.result.encode()
