"""Retry timing: exponential backoff with full jitter, bounded, honouring Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    # Attempts in all, across fallbacks and retries of the same deployment.
    max_attempts: int = 3
    backoff_base_s: float = 0.1
    backoff_max_s: float = 2.0
    # A Retry-After longer than this is not waited out: the client gets the 429.
    max_retry_after_s: float = 5.0

    def delay(self, retry_number: int, retry_after: float | None, rng: random.Random | None = None) -> float | None:
        """Seconds to wait before retry ``retry_number`` (1-based), or None to give up."""
        if retry_number >= self.max_attempts:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after_s else None
        cap = min(self.backoff_max_s, self.backoff_base_s * (2 ** (retry_number - 1)))
        return (rng or random).uniform(0, cap)
