"""What every HTTP engine shares: the pooled clients, error and status mapping, Retry-After, the health probe.

Two clients per deployment: ``open_pool`` gives the lean ``serving.h1`` pool the
OpenAI-compatible engines send inference requests through; ``open_session`` the
aiohttp session the other engines, the health probe and the batch APIs use.
Both are bounded by the deployment's connection limit and timeouts, and both
kinds of failure are mapped here (``transport_error``).

Engines keep only what their provider's wire format needs (URLs, headers, bodies,
error envelopes); how a transport failure or an upstream status becomes a
``core.errors`` class is decided here, once, as httpx's
``map_httpcore_exceptions`` does. Whether an error says the deployment is down
for everyone (``deployment_down``) or may be the request's own doing is part of
that mapping: the circuit breaker reads it.
"""

from __future__ import annotations

import asyncio
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

import aiohttp

from core.errors import (
    GatewayError,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from serving import h1
from serving.base import EngineRequest, EngineSpec, Load, Timeouts
from serving.error_codes import known_code

# A Retry-After beyond this is taken as this: a broken or hostile upstream must not
# take its deployment out of rotation for days.
MAX_RETRY_AFTER_S = 600.0
# Statuses that say the upstream serves nobody right now. A 500 or a 504 may be one
# request's own doing (a body the server chokes on, a generation too long for a
# proxy's timeout), so they are not here.
_DOWN_STATUSES = frozenset({502, 503, 529})
# The gateway's own key or account was refused: not the client's to fix.
_REFUSED_STATUSES = frozenset({401, 402, 403})
# How long one health probe may take, and how long its answer is reused, so that
# /readyz polled in a loop costs the upstream at most one request a second.
PROBE_TIMEOUT_S = 5.0
PROBE_TTL_S = 1.0


@dataclass(frozen=True, slots=True)
class ErrorFields:
    """What an engine read from its provider's error envelope."""

    message: str = ""
    code: str | None = None
    param: str | None = None


def open_session(spec: EngineSpec) -> aiohttp.ClientSession:
    """One pooled keep-alive session per deployment, bounded by its timeouts."""
    t = spec.timeouts
    connector = aiohttp.TCPConnector(limit=spec.max_connections, ttl_dns_cache=300, keepalive_timeout=60, enable_cleanup_closed=True)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=t.total_s, connect=t.connect_s, sock_read=t.read_s),
        skip_auto_headers=("User-Agent",),
    )


def open_pool(spec: EngineSpec, base_url: str) -> h1.H1Pool:
    """The lean keep-alive client the engines' inference requests go through, bounded as the session is."""
    t = spec.timeouts
    return h1.H1Pool(base_url, limit=spec.max_connections, connect_s=t.connect_s, read_s=t.read_s, total_s=t.total_s)


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date, clamped to [0, MAX_RETRY_AFTER_S]."""
    if not value:
        return None
    seconds: float | None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _seconds_until(value, now)
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def _seconds_until(http_date: str, now: Callable[[], float]) -> float | None:
    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # "-0000" parses to a naive datetime; HTTP dates are always GMT.
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - now()


def status_error(
    name: str, status: int, fields: ErrorFields, retry_after: str | None, now: Callable[[], float] = time.time
) -> GatewayError:
    """An upstream's non-200 answer --> the gateway's error for it (only a documented error code is kept)."""
    where = f"deployment {name} answered {status}"
    code = known_code(fields.code)
    if status == 429:
        return UpstreamRateLimited(f"{where}: rate limited", retry_after=parse_retry_after(retry_after, now))
    if status in _REFUSED_STATUSES:
        return UpstreamUnavailable(f"{where}: the gateway's credentials or account were refused")
    if status in (408, 504):
        return UpstreamTimeout(f"{where}: timed out")
    if 400 <= status < 500:
        return UpstreamRejected(fields.message or where, status=status, param=fields.param, code=code)
    # The provider's error type, not its message: messages can quote the request.
    detail = f"{where}: {code or 'server error'}"
    wait = parse_retry_after(retry_after, now)
    if status in _DOWN_STATUSES:
        return UpstreamUnavailable(detail, retry_after=wait)
    return UpstreamError(detail, retry_after=wait)


def transport_error(exc: BaseException, name: str, *, pool_full: bool = False) -> GatewayError:
    """An aiohttp, ``serving.h1`` or timeout exception --> the gateway's error for it.

    ``pool_full``: the engine had every pooled connection in use, so a connect
    timeout may have been spent waiting for our own pool, not on a dead upstream.
    """
    if isinstance(exc, h1.H1Error):
        return _h1_error(exc, name, pool_full)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        if pool_full:
            return UpstreamTimeout(f"deployment {name}: no free connection within the connect timeout")
        return UpstreamConnectTimeout(f"deployment {name} accepted no connection within the connect timeout")
    if isinstance(exc, aiohttp.ClientConnectorError):
        # refused, unreachable, DNS, TLS: nothing was sent
        return UpstreamConnectError(f"deployment {name} is unreachable")
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout(f"deployment {name} timed out while answering")
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        return UpstreamError(f"deployment {name} closed the connection early")
    return UpstreamError(f"deployment {name} failed: {type(exc).__name__}")


def _h1_error(exc: h1.H1Error, name: str, pool_full: bool) -> GatewayError:
    if isinstance(exc, h1.PoolTimeout) or (pool_full and isinstance(exc, h1.ConnectTimeout)):
        return UpstreamTimeout(f"deployment {name}: no free connection within the connect timeout")
    if isinstance(exc, h1.ConnectTimeout):
        return UpstreamConnectTimeout(f"deployment {name} accepted no connection within the connect timeout")
    if isinstance(exc, h1.ConnectError):
        return UpstreamConnectError(f"deployment {name} is unreachable")
    if isinstance(exc, h1.BadResponse):
        return UpstreamError(f"deployment {name} answered with bytes that are not HTTP")
    return UpstreamError(f"deployment {name} closed the connection early")


class HealthProbe:
    """Is the upstream up? One cheap GET with the deployment's credentials.

    Any HTTP answer below 500 is "up": a 404 from a server without that route, a
    401 from a key scoped away from it or a 429 all come from a running upstream.
    Refused or timed-out connections and 5xx answers are "down". Request failures
    play no part. Concurrent callers share one probe, and its answer is reused for
    ``ttl_s``.
    """

    def __init__(self, timeouts: Timeouts, ttl_s: float = PROBE_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._timeout = aiohttp.ClientTimeout(total=min(PROBE_TIMEOUT_S, timeouts.total_s), connect=timeouts.connect_s)
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._up = False
        self._fresh_until = -math.inf

    async def up(self, session: aiohttp.ClientSession | None, url: str, headers: Mapping[str, str]) -> bool:
        if session is None:
            return False
        async with self._lock:
            if self._clock() >= self._fresh_until:
                self._up = await self._ask(session, url, headers)
                self._fresh_until = self._clock() + self._ttl_s
            return self._up

    async def _ask(self, session: aiohttp.ClientSession, url: str, headers: Mapping[str, str]) -> bool:
        try:
            async with session.get(url, headers=headers, timeout=self._timeout, allow_redirects=False) as resp:
                # read, so the connection goes back to the pool
                await resp.read()
                return resp.status < 500
        except (TimeoutError, aiohttp.ClientError):
            return False


def trace_headers(request: EngineRequest) -> dict[str, str] | None:
    """The W3C trace context ``request`` carries, as headers to send upstream; None when it carries none."""
    if request.traceparent is None:
        return None
    headers = {"traceparent": request.traceparent}
    if request.tracestate:
        headers["tracestate"] = request.tracestate
    return headers


class HttpUpstream(ABC):
    """What every HTTP engine keeps: its pooled session, its in-flight count and its health probe.

    An engine sets ``_headers`` (the deployment's credentials among them) and
    says where its upstream lists its models (``models_url``); the rest of the
    Engine interface that does not depend on the provider's wire format is here.
    """

    _headers: dict[str, str]

    def __init__(self, spec: EngineSpec) -> None:
        self.name = spec.name
        self.spec = spec
        self._session: aiohttp.ClientSession | None = None
        self._running = 0
        self._probe = HealthProbe(spec.timeouts)

    @abstractmethod
    def models_url(self) -> str:
        """Where the health probe asks whether the upstream answers."""

    async def start(self) -> None:
        if self._session is None:
            self._session = open_session(self.spec)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def health(self) -> bool:
        """The upstream is up: it answers the probe, whatever requests have failed."""
        return await self._probe.up(self._session, self.models_url(), self._headers)

    def load(self) -> Load:
        return Load(running=self._running)

    def _headers_for(self, request: EngineRequest) -> dict[str, str]:
        """The deployment's headers, plus the W3C trace context the request carries (the shared dict when none)."""
        trace = trace_headers(request)
        return self._headers if trace is None else {**self._headers, **trace}

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise UpstreamConnectError(f"deployment {self.name} is not started")
        return self._session

    def _transport_error(self, exc: BaseException) -> GatewayError:
        # A request still counted in _running that waits for a connection finds the pool full.
        return transport_error(exc, self.name, pool_full=self._running > self.spec.max_connections)
