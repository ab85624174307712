"""A count of new work on the event loop, for work that should wait while new work keeps coming.

Whatever starts work a client waits for adds one: the HTTP server when it
starts a request (``router.http_protocol``), the upstream client when bytes
of an answer arrive (``serving.h1``). ``router.afterwards`` reads it to let
that work go ahead of its queue. A plain counter: one process, one event loop
thread; nothing reads it for anything exact.
"""

from __future__ import annotations


class Activity:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


ACTIVITY = Activity()
