"""Operational alerts to a webhook: JSON bodies signed with HMAC-SHA256.

The receiver recomputes ``sha256=HMAC(secret, "<timestamp>.<body>")`` and
compares it with ``X-Sluicegate-Signature`` in constant time, and refuses a
timestamp (``X-Sluicegate-Timestamp``, epoch seconds) too old to be fresh.
A failed delivery is logged (status or error class only) and never raised.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any

import aiohttp
import msgspec

from core.config import AlertsConfig, ConfigError

log = logging.getLogger("sluicegate.alerts")


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


async def send_alert(config: AlertsConfig, event: dict[str, Any]) -> bool:
    """POST ``event`` to the configured webhook; False when none is configured or delivery failed."""
    if config.webhook_url is None:
        return False
    body = msgspec.json.encode(event)
    timestamp = str(int(time.time()))
    headers = {"content-type": "application/json", "x-sluicegate-timestamp": timestamp}
    if config.webhook_secret is not None:
        try:
            secret = config.webhook_secret.resolve().encode()
        except ConfigError as exc:
            log.error("alert not sent: key `alerts.webhook_secret`: %s", exc)
            return False
        headers["x-sluicegate-signature"] = signature(secret, timestamp, body)
    try:
        timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(config.webhook_url, data=body, headers=headers) as response:
                if response.status >= 300:
                    log.warning("alert webhook answered %d", response.status)
                    return False
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.warning("alert webhook unreachable: %s", type(exc).__name__)
        return False
    return True
