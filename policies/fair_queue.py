"""A bounded wait queue per model alias: priority classes, weighted fair sharing, deadlines.

Capacity is the number of requests the alias may have in flight on this
replica. When it is full, requests wait. The next slot goes to the highest
priority class that has waiters; within a class, start-time fair queuing
between tenants: each waiter gets the tag ``max(virtual clock, tenant's last
tag) + 1/weight`` and the lowest tag is served first. A tenant that floods the
queue only pushes its own tags up, so another tenant's next request is served
after at most about one request per competing tenant. Waiters past their
deadline, or arriving at a full queue, are shed with 503 and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

from router.errors import Overloaded

PRIORITIES = ("critical", "high", "standard", "low")


@dataclass(order=True, slots=True)
class _Waiter:
    tag: float
    seq: int
    tenant: str = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


@dataclass(slots=True)
class _Class:
    heap: list[_Waiter] = field(default_factory=list)
    clock: float = 0.0
    last_tag: dict[str, float] = field(default_factory=dict)


class FairQueue:
    def __init__(self, capacity: int, max_waiting: int = 1000, deadline_s: float = 30.0) -> None:
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.deadline_s = deadline_s
        self.in_use = 0
        self.waiting = 0
        self._classes = {p: _Class() for p in PRIORITIES}
        self._seq = itertools.count()

    async def acquire(self, tenant: str, weight: int = 1, priority: str = "standard") -> None:
        """Wait for a slot; raises Overloaded when the queue is full or the deadline passes."""
        if self.in_use < self.capacity and self.waiting == 0:
            self.in_use += 1
            return
        if self.waiting >= self.max_waiting:
            raise Overloaded("The model is saturated and its queue is full; retry shortly.", retry_after=1.0)
        cls = self._classes.get(priority) or self._classes["standard"]
        tag = max(cls.clock, cls.last_tag.get(tenant, 0.0)) + 1.0 / max(1, weight)
        cls.last_tag[tenant] = tag
        waiter = _Waiter(tag, next(self._seq), tenant, asyncio.get_running_loop().create_future())
        heapq.heappush(cls.heap, waiter)
        self.waiting += 1
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.deadline_s)
        except asyncio.TimeoutError:
            self._abandon(waiter)
            raise Overloaded("The request waited too long in the model's queue; retry shortly.", retry_after=1.0) from None
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise

    def release(self) -> None:
        """Give the slot to the next waiter, or free it."""
        for cls in self._classes.values():
            while cls.heap:
                waiter = heapq.heappop(cls.heap)
                if waiter.future.done():
                    continue  # abandoned; already uncounted
                self.waiting -= 1
                cls.clock = waiter.tag
                waiter.future.set_result(None)  # the slot passes on: in_use unchanged
                return
        self.in_use -= 1
        if self.in_use == 0:
            self._forget_idle_tenants()

    def _abandon(self, waiter: _Waiter) -> None:
        if waiter.future.done() and not waiter.future.cancelled():
            # The slot was handed over just as the waiter gave up: pass it on.
            self.release()
            return
        waiter.future.cancel()
        self.waiting -= 1

    def _forget_idle_tenants(self) -> None:
        # With nobody waiting, old tags carry no fairness information.
        for cls in self._classes.values():
            if not cls.heap:
                cls.last_tag.clear()
