"""A bounded wait queue per model alias: priority classes, weighted fair sharing, headroom, deadlines.

Capacity is the number of requests the alias may have in flight on this
replica. When it is full, requests wait. The next slot goes to the highest
priority class that has waiters; within a class, start-time fair queuing
between tenants: each waiter gets the tag ``max(virtual clock, tenant's last
tag) + 1/weight`` and the lowest tag is served first. A tenant that floods the
queue only pushes its own tags up, so another tenant's next request is served
after at most about one request per competing tenant.

Fair order alone still makes a light tenant wait for the next slot to come
free, up to a whole request of the flooding tenant's. Headroom removes that
wait: slots are kept back for every other tenant active in the last
``ACTIVE_WINDOW_S`` — ``headroom`` more than it holds now, or as many as it
has held at once in that time if that is more, and at most an equal share of
the alias — so that a light tenant's next request finds one free even while
its last is still being served. A tenant never has fewer than one slot, and a
tenant alone gets every slot. What is
kept back and not used is capacity the heavy tenant does not get: the price of
the light tenant's latency.

Waiters past their deadline, or arriving at a full queue, are shed with 503
and ``Retry-After``.

An ``observer``, when set, hears how long each admitted request waited (0
when a slot was free) and each request shed, with its reason (``queue_full``,
``queue_timeout``): the metrics, without this room knowing of them.

The ``batch`` class, below ``low``, is for requests of ``/v1/batches``: it gets
a slot only while no request of another class waits, and never the last free
slot of an alias with more than one, so an interactive request that arrives
finds a slot without waiting for a batch request to finish.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

from core.errors import Overloaded

PRIORITIES = ("critical", "high", "standard", "low", "batch")
BATCH = "batch"
# A tenant counts as active this long after it last asked for or gave back a slot.
ACTIVE_WINDOW_S = 1.0


class QueueObserver(Protocol):
    def waited(self, seconds: float) -> None: ...
    def shed(self, tenant: str, reason: str) -> None: ...


@dataclass(slots=True)
class _Waiter:
    tag: float
    seq: int
    tenant: str
    future: asyncio.Future[None]


@dataclass(slots=True)
class _Class:
    # One entry per tenant with waiters: (tag of its first waiter, seq, tenant).
    heads: list[tuple[float, int, str]] = field(default_factory=list)
    waiters: dict[str, deque[_Waiter]] = field(default_factory=dict)
    clock: float = 0.0
    last_tag: dict[str, float] = field(default_factory=dict)


class FairQueue:
    def __init__(self, capacity: int, max_waiting: int = 1000, deadline_s: float = 30.0, headroom: int = 1) -> None:
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.deadline_s = deadline_s
        # A single slot cannot be kept back: the one tenant there is would wait for ever.
        self.headroom = min(headroom, capacity - 1)
        self.in_use = 0
        self.waiting = 0
        self._held: dict[str, int] = {}
        # tenant --> (most slots held at once lately, when it last held that many)
        self._peak: dict[str, tuple[int, float]] = {}
        self._active: OrderedDict[str, float] = OrderedDict()  # tenant --> when last seen, oldest first
        self._classes = {p: _Class() for p in PRIORITIES}
        self._seq = itertools.count()
        self.observer: QueueObserver | None = None

    async def acquire(self, tenant: str, weight: int = 1, priority: str = "standard") -> None:
        """Wait for a slot; raises Overloaded when the queue is full or the deadline passes."""
        self._seen(tenant)
        observer = self.observer
        if self.in_use < self.capacity:
            if self.waiting:
                self._dispatch()  # a slot may have been kept back for tenants now gone
            if self.in_use < self.capacity and not self._capped(tenant) and (priority != BATCH or self._batch_may_start()):
                self._take(tenant)
                if observer is not None:
                    observer.waited(0.0)
                return
        if self.waiting >= self.max_waiting:
            if observer is not None:
                observer.shed(tenant, "queue_full")
            raise Overloaded("The model is saturated and its queue is full; retry shortly.", retry_after=1.0)
        started = time.monotonic()
        cls = self._classes.get(priority) or self._classes["standard"]
        tag = max(cls.clock, cls.last_tag.get(tenant, 0.0)) + 1.0 / max(1, weight)
        cls.last_tag[tenant] = tag
        waiter = _Waiter(tag, next(self._seq), tenant, asyncio.get_running_loop().create_future())
        queued = cls.waiters.get(tenant)
        if queued is None:
            queued = cls.waiters[tenant] = deque()
        if not queued:
            heapq.heappush(cls.heads, (tag, waiter.seq, tenant))
        queued.append(waiter)
        self.waiting += 1
        if priority == BATCH and self.in_use < self.capacity:
            # Queued behind interactive waiters that may have gone (or be held back): a free slot is its if none is served.
            self._dispatch()
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.deadline_s)
        except TimeoutError:
            self._abandon(waiter)
            if observer is not None:
                observer.shed(tenant, "queue_timeout")
            raise Overloaded("The request waited too long in the model's queue; retry shortly.", retry_after=1.0) from None
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        if observer is not None:
            observer.waited(time.monotonic() - started)

    def release(self, tenant: str) -> None:
        """Give back a slot ``tenant`` holds; it goes to the next waiter that may have it."""
        held = self._held.get(tenant, 0) - 1
        if held > 0:
            self._held[tenant] = held
        else:
            self._held.pop(tenant, None)
        self.in_use -= 1
        self._seen(tenant)
        if self.waiting:
            self._dispatch()
        if self.in_use == 0 and self.waiting == 0:
            self._forget_idle_tenants()

    # -- slots -----------------------------------------------------------------

    def _take(self, tenant: str) -> None:
        self.in_use += 1
        held = self._held[tenant] = self._held.get(tenant, 0) + 1
        if self.headroom:
            peak, now = self._peak.get(tenant), time.monotonic()
            if peak is None or held >= peak[0] or now - peak[1] > ACTIVE_WINDOW_S:
                self._peak[tenant] = (held, now)

    def _seen(self, tenant: str) -> None:
        active = self._active
        now = time.monotonic()
        active[tenant] = now
        active.move_to_end(tenant)
        horizon = now - ACTIVE_WINDOW_S
        while active:
            first = next(iter(active))
            if active[first] >= horizon:
                break
            del active[first]
            if first not in self._held:
                self._peak.pop(first, None)

    def _capped(self, tenant: str) -> bool:
        """Whether one more slot for ``tenant`` would take what is kept back for the others."""
        if not self.headroom:
            return False
        held = self._held.get(tenant, 0)
        if self.in_use == held and len(self._active) == (1 if tenant in self._active else 0):
            return False  # alone
        now = time.monotonic()
        others = (self._active.keys() | self._held.keys()) - {tenant}
        # No tenant is kept more than an equal share: the others may not fence a heavy tenant out either.
        share = max(1, self.capacity // (len(others) + 1))
        kept = 0
        for other in others:
            peak, when = self._peak.get(other, (0, now))
            recent = peak if now - when <= ACTIVE_WINDOW_S else 0
            kept += min(share, max(self.headroom + self._held.get(other, 0), recent))
        return held + 1 > self.capacity - min(kept, self.capacity - 1)

    def _dispatch(self) -> None:
        """Hand free slots to the first waiters, in priority and fair order, that may take one."""
        while self.in_use < self.capacity and self.waiting:
            waiter = self._next_waiter()
            if waiter is None:
                return  # every waiter's tenant has all it may hold: the slot stays free
            self.waiting -= 1
            self._take(waiter.tenant)
            waiter.future.set_result(None)

    def _free_for(self, priority: str) -> bool:
        """A free slot this class may take: the batch class leaves the last one to the others."""
        if priority == BATCH and self.capacity > 1:
            return self.in_use < self.capacity - 1
        return self.in_use < self.capacity

    def _batch_may_start(self) -> bool:
        return self._free_for(BATCH) and not any(cls.heads for name, cls in self._classes.items() if name != BATCH)

    def _next_waiter(self) -> _Waiter | None:
        for name, cls in self._classes.items():
            if name == BATCH and not self._free_for(BATCH):
                return None
            held_back: list[tuple[float, int, str]] = []
            found = None
            while cls.heads:
                entry = heapq.heappop(cls.heads)
                queued = cls.waiters[entry[2]]
                while queued and queued[0].future.done():
                    queued.popleft()  # abandoned; already uncounted
                if not queued:
                    del cls.waiters[entry[2]]
                    continue
                if self._capped(entry[2]):
                    held_back.append((queued[0].tag, queued[0].seq, entry[2]))
                    continue
                found = queued.popleft()
                cls.clock = found.tag
                if queued:
                    heapq.heappush(cls.heads, (queued[0].tag, queued[0].seq, entry[2]))
                else:
                    del cls.waiters[entry[2]]
                break
            for entry in held_back:
                heapq.heappush(cls.heads, entry)
            if found is not None:
                return found
        return None

    def _abandon(self, waiter: _Waiter) -> None:
        if waiter.future.done() and not waiter.future.cancelled():
            # The slot was handed over just as the waiter gave up: pass it on.
            self.release(waiter.tenant)
            return
        waiter.future.cancel()
        self.waiting -= 1

    def _forget_idle_tenants(self) -> None:
        # With nobody waiting, old tags carry no fairness information.
        for cls in self._classes.values():
            if not cls.heads:
                cls.last_tag.clear()
