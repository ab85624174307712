"""Metrics hooks: plain callables the worker calls, so a later wiring can bind Prometheus.

Labels are the task kind and outcome only (bounded); never a tenant's input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def _ignore(*_args: object) -> None:
    return None


@dataclass(frozen=True)
class Hooks:
    started: Callable[[str], None] = _ignore  # kind
    # kind; succeeded, failed, cancelled, dead, retried, yielded or lost (the lease); seconds
    finished: Callable[[str, str, float], None] = _ignore
    retried: Callable[[str, float], None] = _ignore  # kind, delay in seconds
    reclaimed: Callable[[int], None] = _ignore  # entries taken over from dead workers
