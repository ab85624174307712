"""AWS Signature Version 4 for S3 requests, with the standard library only.

What the S3 file store sends: a method, an object key, query parameters, a
few headers and the SHA-256 of the payload. ``sign`` returns the headers to
send, ``Authorization`` included. The secret key is used as an HMAC key and
nowhere else: it is never part of a string, a log line or a ``repr``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def uri_encode(value: str, *, keep_slash: bool = False) -> str:
    """S3's URI encoding: every byte but the unreserved characters (and ``/`` in a path) as ``%XX``."""
    return quote(value, safe="-_.~/" if keep_slash else "-_.~")


def canonical_query(params: Mapping[str, str]) -> str:
    """The query string as signed, and as sent: encoded pairs sorted by name."""
    return "&".join(f"{k}={v}" for k, v in sorted((uri_encode(k), uri_encode(v)) for k, v in params.items()))


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign(
    credentials: Credentials,
    *,
    method: str,
    host: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    payload_sha256: str,
    region: str,
    now: datetime,
    service: str = "s3",
) -> dict[str, str]:
    """``headers`` plus ``host``, ``x-amz-date``, ``x-amz-content-sha256`` (and the session token), signed.

    ``path`` is the encoded path as sent (``uri_encode(key, keep_slash=True)``);
    ``now`` must be UTC.
    """
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    out = {k.lower(): " ".join(v.split()) for k, v in headers.items()}
    out.update({"host": host, "x-amz-date": stamp, "x-amz-content-sha256": payload_sha256})
    if credentials.session_token is not None:
        out["x-amz-security-token"] = credentials.session_token
    names = sorted(out)
    canonical = "\n".join(
        [method, path or "/", canonical_query(query), *(f"{n}:{out[n]}" for n in names), "", ";".join(names), payload_sha256]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + credentials.secret_access_key).encode(), day), region), service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return out
