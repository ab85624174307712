"""Admission of tool calls: calls a minute and calls in flight, per tenant and server, on this replica.

A refused call is answered at once (never queued); a call admitted holds its
concurrency slot until it ends, however it ends.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

from sluicegate_mcp.options import Limits

WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a call was not admitted (``reason``: rate or concurrency) and when to try again."""

    reason: str
    retry_after_s: float


class Admission:
    """Counters for every (tenant, server) pair seen."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._starts: dict[tuple[str, str], collections.deque[float]] = {}
        self._inflight: dict[tuple[str, str], int] = {}

    def admit(self, tenant: str, server: str, limits: Limits) -> Refused | None:
        """Take a slot for one call (release it with ``release``), or say why not."""
        key = (tenant, server)
        inflight = self._inflight.get(key, 0)
        if limits.max_concurrent is not None and inflight >= limits.max_concurrent:
            return Refused("concurrency", 1.0)
        if limits.rpm is not None:
            now = self._clock()
            starts = self._starts.setdefault(key, collections.deque())
            while starts and starts[0] <= now - WINDOW_S:
                starts.popleft()
            if len(starts) >= limits.rpm:
                return Refused("rate", max(0.0, starts[0] + WINDOW_S - now))
            starts.append(now)
        self._inflight[key] = inflight + 1
        return None

    def release(self, tenant: str, server: str) -> None:
        key = (tenant, server)
        left = self._inflight.get(key, 1) - 1
        if left <= 0:
            self._inflight.pop(key, None)
        else:
            self._inflight[key] = left
