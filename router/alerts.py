"""Operational alerts to a webhook: JSON bodies signed with HMAC-SHA256, retried with backoff.

The receiver recomputes ``sha256=HMAC(secret, "<timestamp>.<body>")`` and
compares it with ``X-Sluicegate-Signature`` in constant time, and refuses a
timestamp (``X-Sluicegate-Timestamp``, epoch seconds) too old to be fresh.

A delivery that fails for a reason that may pass (connection error, timeout,
5xx, 429) is tried again ``alerts.retries`` times, waiting ``alerts.backoff_s``
and twice as long each time, or what a ``Retry-After`` asks (bounded). Every
try is signed anew with a fresh timestamp; the body, and so its ``id``, stays
the same, so a receiver that got an earlier try can drop the repeat. Any other
answer (4xx, a redirect) is final. A failed delivery is logged (status or error class only, never
the URL, which may hold a token) and never raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import msgspec

from core.config import AlertsConfig, ConfigError

log = logging.getLogger("sluicegate.alerts")
# A receiver's Retry-After is honoured up to this long.
MAX_RETRY_AFTER_S = 60.0

Sleep = Callable[[float], Awaitable[None]]


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class _Try(msgspec.Struct, frozen=True):
    """How one try ended: delivered, worth trying again (after ``wait_s`` if the receiver said), and why."""

    delivered: bool
    retry: bool
    why: str
    wait_s: float | None = None


async def send_alert(config: AlertsConfig, event: dict[str, Any], *, sleep: Sleep = asyncio.sleep) -> bool:
    """POST ``event`` to the configured webhook; False when none is configured or delivery failed.

    An event without an ``id`` is given one, the same for every try.
    """
    if config.webhook_url is None:
        return False
    secret: bytes | None = None
    if config.webhook_secret is not None:
        try:
            secret = config.webhook_secret.resolve().encode()
        except ConfigError as exc:
            log.error("alert not sent: key `alerts.webhook_secret`: %s", exc)
            return False
    if "id" not in event:
        event = {"id": uuid.uuid4().hex, **event}
    body = msgspec.json.encode(event)
    kind = str(event.get("type") or event.get("event") or "alert")
    timeout = aiohttp.ClientTimeout(total=config.timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for attempt in range(config.retries + 1):
            outcome = await _post(session, config.webhook_url, body, secret)
            if outcome.delivered:
                return True
            if not outcome.retry or attempt == config.retries:
                log.warning("alert %s (%s) not delivered after %d tries: %s", kind, event["id"], attempt + 1, outcome.why)
                return False
            backoff = config.backoff_s * 2**attempt
            wait = backoff if outcome.wait_s is None else min(outcome.wait_s, MAX_RETRY_AFTER_S)
            log.info("alert %s (%s) try %d failed (%s); again in %.1fs", kind, event["id"], attempt + 1, outcome.why, wait)
            await sleep(wait)
    return False


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, secret: bytes | None) -> _Try:
    timestamp = str(int(time.time()))
    headers = {"content-type": "application/json", "x-sluicegate-timestamp": timestamp}
    if secret is not None:
        headers["x-sluicegate-signature"] = signature(secret, timestamp, body)
    try:
        # A redirect is not followed: the signed body goes to the configured URL only.
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
            status = response.status
            if status < 300:
                return _Try(True, False, str(status))
            retry = status == 429 or status >= 500
            wait = retry_after_s(response.headers.get("retry-after"), time.time()) if retry else None
            return _Try(False, retry, f"answered {status}", wait)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return _Try(False, True, f"unreachable ({type(exc).__name__})")
