"""The response cache's store: entries by key (``router.cache_key``), bounded in size and expiring.

Two implementations share this contract: ``MemoryCacheStore`` (one process,
least recently used dropped first once ``max_bytes`` is held) and
``RedisCacheStore`` (every replica, entries compressed above a threshold);
``tests/contract/test_cache_store.py`` runs the same assertions against both.

A cache must never make a request fail: a store that cannot be reached or
answers late is a miss (``get`` answers None, ``put`` False), and an entry
that cannot be decoded is deleted and never served. Counting hits, misses and
bytes is the caller's job.

An entry holds the deployment's answer before anything is restored or
rendered for the client: a unary JSON ``body``, or the ``chunks`` of a stream
(each SSE ``data:`` payload, without the prefix, in order), stored only once
the stream completed. Both stores keep it as ``encode_entry`` writes it: a
format byte, a codec byte, then msgpack (zlib-compressed under codec 1).
"""

from __future__ import annotations

import math
import zlib
from typing import Final, Protocol, runtime_checkable

import msgspec

from serving.base import Usage

# The entry layout; bump it whenever CacheEntry changes. Redis keys carry it too,
# so replicas of two releases never read each other's entries.
ENTRY_FORMAT: Final = 1
RAW: Final = 0
ZLIB: Final = 1
# zlib level 1: entries are JSON text and compress well even at the fastest level.
_ZLIB_LEVEL = 1


class CacheEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One cached answer. Exactly one of ``body`` and ``chunks`` is set."""

    # The deployment that produced the answer.
    deployment: str
    # When the answer was produced (epoch seconds).
    created_at: float
    # What the original request cost, in pico-USD: what a hit saved.
    cost: int = 0
    usage: Usage | None = None
    body: bytes | None = None
    chunks: tuple[bytes, ...] | None = None

    def __post_init__(self) -> None:
        if (self.body is None) == (self.chunks is None):
            raise ValueError("a cache entry holds exactly one of `body` and `chunks`")

    @property
    def streamed(self) -> bool:
        return self.chunks is not None

    def payload_bytes(self) -> int:
        """The size of the answer itself, for an alias's ``max_entry_bytes``."""
        if self.body is not None:
            return len(self.body)
        assert self.chunks is not None
        return sum(len(chunk) for chunk in self.chunks)


class CorruptEntry(Exception):
    """A stored value that is not an entry this release wrote."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CacheEntry)


def encode_entry(entry: CacheEntry) -> bytes:
    """The entry as msgpack, uncompressed and without a header."""
    return _encoder.encode(entry)


def frame(packed: bytes, compress: bool) -> bytes:
    """A stored value: format byte, codec byte, then ``packed`` as it is or zlib-compressed."""
    if compress:
        return bytes((ENTRY_FORMAT, ZLIB)) + zlib.compress(packed, _ZLIB_LEVEL)
    return bytes((ENTRY_FORMAT, RAW)) + packed


def decode_entry(value: bytes, max_bytes: int) -> CacheEntry:
    """The entry a stored value holds; ``CorruptEntry`` for anything else, or one inflating past ``max_bytes``."""
    if len(value) < 2 or value[0] != ENTRY_FORMAT or value[1] not in (RAW, ZLIB):
        raise CorruptEntry("unknown header")
    packed = memoryview(value)[2:]
    if value[1] == ZLIB:
        inflater = zlib.decompressobj()
        try:
            inflated = inflater.decompress(packed, max_bytes + 1)
        except zlib.error:
            raise CorruptEntry("bad compression") from None
        if len(inflated) > max_bytes or not inflater.eof or inflater.unused_data:
            raise CorruptEntry("bad compression")
        packed = memoryview(inflated)
    try:
        return _decoder.decode(packed)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise CorruptEntry("not an entry") from None


def check_ttl(ttl_s: float) -> None:
    """What every ``put`` must satisfy, whichever store serves it."""
    if not 0 < ttl_s < math.inf:
        raise ValueError("ttl_s must be positive and finite")


@runtime_checkable
class CacheStore(Protocol):
    async def get(self, key: str) -> CacheEntry | None:
        """The live entry under ``key``; None when there is none, it expired, it was corrupt, or the store failed."""
        ...

    async def put(self, key: str, entry: CacheEntry, ttl_s: float) -> bool:
        """Keep ``entry`` under ``key`` for ``ttl_s`` seconds, replacing any; False when refused (too large) or the store failed."""
        ...

    async def delete(self, key: str) -> None:
        """Forget ``key``; nothing happens when it is absent or the store failed."""
        ...

    async def close(self) -> None: ...
