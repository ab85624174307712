"""The embedded response cache store: this process's entries, bounded in bytes, least recently used dropped first.

Entries are kept encoded (``router.cache_store.frame``): the bytes counted are
the bytes held, and an entry handed out is a fresh copy no caller can change
under another. Every method runs to completion without awaiting, so on one
event loop each is atomic without a lock.

Expired entries are dropped when read, or pushed out as the least recently
used; nothing scans for them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from router.cache_store import CacheEntry, CorruptEntry, check_ttl, decode_entry, encode_entry, frame

# What one entry costs beyond its key and value: the dict slot, the tuple, the objects' headers.
ENTRY_OVERHEAD = 160


class MemoryCacheStore:
    def __init__(
        self, max_bytes: int = 256 * 1024 * 1024, max_entry_bytes: int = 4 * 1024 * 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``clock`` gives monotonic seconds (tests move time by hand)."""
        if max_bytes <= 0 or max_entry_bytes <= 0:
            raise ValueError("max_bytes and max_entry_bytes must be positive")
        self._max_bytes = max_bytes
        self._max_entry_bytes = max_entry_bytes
        self._clock = clock
        # key --> (stored value, when it expires), least recently used first.
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._held = 0

    @property
    def held_bytes(self) -> int:
        """What the entries hold now, as counted against ``max_bytes``."""
        return self._held

    async def get(self, key: str) -> CacheEntry | None:
        found = self._entries.get(key)
        if found is None:
            return None
        value, expires_at = found
        if expires_at <= self._clock():
            self._drop(key)
            return None
        try:
            entry = decode_entry(value, self._max_entry_bytes)
        except CorruptEntry:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    async def put(self, key: str, entry: CacheEntry, ttl_s: float) -> bool:
        check_ttl(ttl_s)
        packed = encode_entry(entry)
        if len(packed) > self._max_entry_bytes:
            return False
        value = frame(packed, compress=False)
        size = _size(key, value)
        if size > self._max_bytes:
            return False
        self._drop(key)
        while self._held + size > self._max_bytes:
            oldest, (old_value, _) = self._entries.popitem(last=False)
            self._held -= _size(oldest, old_value)
        self._entries[key] = (value, self._clock() + ttl_s)
        self._held += size
        return True

    async def delete(self, key: str) -> None:
        self._drop(key)

    async def close(self) -> None:
        self._entries.clear()
        self._held = 0

    def _drop(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self._held -= _size(key, found[0])


def _size(key: str, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD
