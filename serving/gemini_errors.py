"""Google's error envelope, read for what the transport's status mapping needs.

Google answers ``{"error": {"code", "message", "status", "details": [...]}}``
(streaming endpoints may wrap it in a one-element array). Two things hide in
``details``: a ``RetryInfo`` whose ``retryDelay`` stands in for the Retry-After
header Google seldom sends, and an ``ErrorInfo`` whose ``reason`` tells a refused
API key or token (which Google reports as a 400) from a bad request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from serving.http_transport import ErrorFields

# ErrorInfo reasons that say the deployment's own credentials were refused.
_CREDENTIAL_REASONS = ("API_KEY_", "ACCESS_TOKEN_")
_decode = msgspec.json.Decoder(object).decode


@dataclass(frozen=True, slots=True)
class GoogleError:
    fields: ErrorFields = field(default_factory=ErrorFields)
    # seconds, as Retry-After would say them
    retry_delay: str | None = None
    credentials_refused: bool = False


def google_error(raw: bytes, secret: str | None) -> GoogleError:
    """What a non-200 body says; ``secret`` is scrubbed from the message should Google ever echo it."""
    try:
        envelope = _decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return GoogleError()
    if isinstance(envelope, list) and envelope:
        envelope = envelope[0]
    error = envelope.get("error") if isinstance(envelope, dict) else None
    if not isinstance(error, dict):
        return GoogleError()
    raw_message = error.get("message")
    message = raw_message if isinstance(raw_message, str) else ""
    if secret:
        message = message.replace(secret, "[redacted]")
    status = error.get("status")
    fields = ErrorFields(message=message[:500], code=status if isinstance(status, str) else None)
    retry_delay: str | None = None
    refused = False
    for detail in error.get("details") or ():
        if not isinstance(detail, dict):
            continue
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            retry_delay = delay[:-1]
        reason = detail.get("reason")
        if isinstance(reason, str) and reason.startswith(_CREDENTIAL_REASONS):
            refused = True
    return GoogleError(fields=fields, retry_delay=retry_delay, credentials_refused=refused)
