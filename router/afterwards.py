"""Work that follows an answer: run after the answer is written, when the event loop has nothing newer in hand.

Once a request is settled (its cost charged, its limits released) what is
left is bookkeeping no client waits for: the spend metrics, the access-log
line, the budget-alert check, the ledger row. Run where the request settles,
that work comes before the answer's write, and before every request that
arrived meanwhile; queued here, the answer goes out first, and the queue runs
at the event loop's next round, or later while new work keeps coming.

New work is what ``core.activity.ACTIVITY`` counts: a request the HTTP
server starts (``router.http_protocol``) and bytes from an upstream
(``serving.h1``). When the queue's turn comes and the count has moved since
it was queued, the queue waits one more round, behind that work: at most
``MAX_WAITS`` rounds in a row, and only while fewer than ``BATCH`` items
wait. Then it runs every item waiting. So at a steady rate a request waits
for the requests ahead of it, not for their bookkeeping too (a busy core's
queue is shorter for the work that answers), and under a load that never
lets up the queue runs in batches of about ``BATCH``, never growing.

Nothing is lost or reordered: items run in the order they were queued, each
once; ``run_all`` runs what is waiting at once (before ``/metrics`` is read,
and when billing drains at shutdown), and an item that raises is logged and
the rest run. Without a running event loop an item runs at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from core.activity import ACTIVITY

log = logging.getLogger("sluicegate.afterwards")

# Rounds of the event loop the queue waits, in a row, behind new work; then it runs regardless.
MAX_WAITS = 8
# With this many items waiting the queue waits no longer: a turn's run stays short.
BATCH = 8


Item = tuple[Callable[[Any], None], Any]


class Afterwards:
    """A queue of calls ``fn(arg)`` run after the current answer, FIFO, each exactly once."""

    __slots__ = ("_items", "_loop", "_seen", "_waits")

    def __init__(self) -> None:
        self._items: deque[Item] = deque()
        # The loop whose next round runs the queue; None when no turn is due.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seen = 0
        self._waits = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, fn: Callable[[Any], None], arg: Any) -> None:
        """Queue ``fn(arg)``; without a running event loop, call it now."""
        self._items.append((fn, arg))
        loop = asyncio._get_running_loop()
        if loop is None:
            self.run_all()
            return
        if loop is self._loop:
            return  # a turn is due on this loop
        self._loop = loop
        self._seen = ACTIVITY.n
        loop.call_soon(self._turn, loop)

    def run_all(self) -> None:
        """Run every item waiting, now."""
        items = self._items
        while items:
            _call(*items.popleft())

    def _turn(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return  # a turn left on a loop that has since been replaced: the current loop's turn runs the queue
        items = self._items
        if not items:
            self._loop = None
            return
        seen = ACTIVITY.n
        if seen != self._seen and self._waits < MAX_WAITS and len(items) < BATCH:
            # Work came in since: let it go first, and look again at the next round.
            self._seen = seen
            self._waits += 1
            loop.call_soon(self._turn, loop)
            return
        self._waits = 0
        self._loop = None  # from here on an item queued (by one of these too) asks for a turn of its own
        self.run_all()


def _call(fn: Callable[[Any], None], arg: Any) -> None:
    try:
        fn(arg)
    except Exception as exc:  # noqa: BLE001 - bookkeeping that fails must not stop the rest
        log.error("work after an answer failed: %s", type(exc).__name__, exc_info=exc)
