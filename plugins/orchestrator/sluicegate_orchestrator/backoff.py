"""Retry delays: exponential backoff with full jitter, counted per step.

The n-th failure of a step waits a uniformly random time in
``[0, min(cap_s, base_s * 2**(n-1)))`` ("full jitter": retries of many tasks
that failed together spread out instead of returning together). The random
source is passed in, so a test can fix it and assert the delays.
"""

from __future__ import annotations

from typing import Protocol

import msgspec


class Random(Protocol):
    def random(self) -> float: ...


class RetryPolicy(msgspec.Struct, frozen=True):
    base_s: float = 1.0
    cap_s: float = 300.0

    def ceiling(self, failures: int) -> float:
        return min(self.cap_s, self.base_s * 2.0 ** max(0, failures - 1))

    def delay(self, failures: int, rng: Random) -> float:
        return rng.random() * self.ceiling(failures)
