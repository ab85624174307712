"""A limit on failed console sign-ins: per client address, and for all addresses together.

Each failed sign-in (a wrong, revoked or expired key, a key without an admin
scope, a refused OIDC callback) is counted in a sliding window of
``WINDOW_S``. An address with ``PER_ADDRESS`` failures in the window, or the
whole console with ``OVERALL``, is answered 429 (with ``Retry-After``) without
the key being checked, until the oldest failure leaves the window: otherwise a
guesser would still learn when it hit. A successful sign-in adds no delay and
clears its address's failures. IPv6 addresses count by their /64, as one host
usually holds the whole prefix.

The counts live in the process that served the attempts: with ``server.workers``
above 1 (or several replicas) each has its own window, so an address may make
up to ``PER_ADDRESS`` failures per process in a window. Behind a proxy every
client shares the proxy's address (the server does not trust forwarded
headers), so the per-address limit then applies to all of them together.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from litestar import Request

WINDOW_S = 60.0
PER_ADDRESS = 10
OVERALL = 300
MAX_ADDRESSES = 10_000
_STATE = "console_login_limit"


class LoginLimit:
    """Failed sign-ins in the last ``window_s``: by address (bounded, least recent dropped first) and overall."""

    def __init__(
        self, *, window_s: float = WINDOW_S, per_address: int = PER_ADDRESS, overall: int = OVERALL,
        capacity: int = MAX_ADDRESSES, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self._window = window_s
        self._per_address = per_address
        self._overall = overall
        self._capacity = capacity
        self._clock = clock
        self._by_address: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque(maxlen=overall)

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again; None when it may try now."""
        now = self._clock()
        waits = []
        failures = self._by_address.get(address)
        if failures is not None:
            self._expire(failures, now)
            if not failures:
                del self._by_address[address]
            elif len(failures) >= self._per_address:
                waits.append(failures[0] + self._window - now)
        self._expire(self._all, now)
        if len(self._all) >= self._overall:
            waits.append(self._all[0] + self._window - now)
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, address: str) -> None:
        now = self._clock()
        failures = self._by_address.get(address)
        if failures is None:
            failures = self._by_address[address] = deque(maxlen=self._per_address)
            while len(self._by_address) > self._capacity:
                self._by_address.popitem(last=False)
        else:
            self._by_address.move_to_end(address)
        failures.append(now)
        self._all.append(now)

    def succeeded(self, address: str) -> None:
        self._by_address.pop(address, None)

    def _expire(self, failures: deque[float], now: float) -> None:
        while failures and failures[0] <= now - self._window:
            failures.popleft()


def client_address(request: Request[Any, Any, Any]) -> str:
    """What failures are counted by: the peer's address (an IPv6 address by its /64)."""
    host = request.client.host if request.client is not None else ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def login_limit(request: Request[Any, Any, Any]) -> LoginLimit:
    """This app's limit (one per process)."""
    limit: LoginLimit | None = request.app.state.get(_STATE)
    if limit is None:
        limit = LoginLimit()
        request.app.state[_STATE] = limit
    return limit


def too_many(wait_s: int) -> str:
    return f"Too many failed sign-ins: wait {wait_s} seconds, then try again."
