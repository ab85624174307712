"""JSON Web Key Sets: the public keys that sign bearer tokens, kept fresh.

The set comes from a local file or an http(s) URL. It is loaded at start,
reloaded every ``refresh_s`` and also when a token names a key id we do not
know (the identity provider rotated its keys). Reloads of any kind happen at
most once per ``min_refresh_s``, so a flood of tokens with made-up key ids costs
the provider one fetch, not one per token. A failed reload keeps the last good
set: an unreachable provider must not lock everyone out.

Only RSA keys (RS256, at least 2048 bits) and EC P-256 keys (ES256) are used;
every other key in the document is skipped. A key's algorithm follows from its
type, never from the token, so a token cannot choose how its key is read. The
token's part here is its header, which names the key (``kid``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import re
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from cryptography.hazmat.primitives.asymmetric import ec, rsa

log = logging.getLogger("sluicegate.jwks")

SUPPORTED_ALGORITHMS = frozenset({"RS256", "ES256"})
MIN_RSA_BITS = 2048
MAX_DOCUMENT_BYTES = 1 << 20
MAX_TOKEN_CHARS = 16 * 1024
_P256_COORD_BYTES = 32
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_header_decoder = msgspec.json.Decoder()

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class JwksError(Exception):
    """The key set could not be read or is not a key set; the message holds no key material."""


@dataclass(slots=True, frozen=True)
class SigningKey:
    kid: str
    alg: str  # "RS256" or "ES256", from the key's type
    key: PublicKey


def token_header(token: str) -> dict[str, Any] | None:
    """The JSON header of a compact token (three base64url segments); None for anything else."""
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2 or not _COMPACT_JWS.fullmatch(token):
        return None
    segment = token.partition(".")[0]
    try:
        value = _header_decoder.decode(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, msgspec.DecodeError):
        return None
    return value if isinstance(value, dict) else None


def parse_jwks(document: bytes, algorithms: Collection[str]) -> dict[str, SigningKey]:
    """The usable signing keys of a JWKS document by key id; unusable keys are skipped."""
    try:
        raw = msgspec.json.decode(document)
    except msgspec.DecodeError:
        raise JwksError("not JSON") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
        raise JwksError("no `keys` list")
    keys: dict[str, SigningKey] = {}
    skipped = 0
    for jwk in raw["keys"]:
        key = _signing_key(jwk, algorithms) if isinstance(jwk, dict) else None
        # A repeated kid is ambiguous: the first one wins, like most verifiers.
        if key is None or key.kid in keys:
            skipped += 1
            continue
        keys[key.kid] = key
    if skipped:
        log.debug("JWKS: skipped %d keys that are not usable signing keys", skipped)
    return keys


def _signing_key(jwk: dict[str, Any], algorithms: Collection[str]) -> SigningKey | None:
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or jwk.get("use", "sig") != "sig":
        return None
    key: PublicKey
    try:
        if jwk.get("kty") == "RSA":
            alg, key = "RS256", _rsa_key(jwk)
        elif jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            alg, key = "ES256", _p256_key(jwk)
        else:
            return None
    except (ValueError, TypeError, binascii.Error):
        return None
    # A JWK may pin its algorithm; it must agree with what its type implies.
    if alg not in algorithms or jwk.get("alg", alg) != alg:
        return None
    return SigningKey(kid=kid, alg=alg, key=key)


def _b64_int(value: object) -> tuple[int, int]:
    """(integer, length in bytes) of a base64url member."""
    if not isinstance(value, str) or not value:
        raise ValueError("missing member")
    data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    return int.from_bytes(data, "big"), len(data)


def _rsa_key(jwk: dict[str, Any]) -> rsa.RSAPublicKey:
    # Only the public members are read: a JWK that also carries private ones still gives a public key.
    n, _ = _b64_int(jwk.get("n"))
    e, _ = _b64_int(jwk.get("e"))
    key = rsa.RSAPublicNumbers(e, n).public_key()
    if key.key_size < MIN_RSA_BITS:
        raise ValueError("RSA key too small")
    return key


def _p256_key(jwk: dict[str, Any]) -> ec.EllipticCurvePublicKey:
    x, x_len = _b64_int(jwk.get("x"))
    y, y_len = _b64_int(jwk.get("y"))
    if x_len != _P256_COORD_BYTES or y_len != _P256_COORD_BYTES:
        raise ValueError("wrong coordinate length")
    # cryptography refuses points that are not on the curve.
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


class KeySet:
    """Signing keys by kid from ``url`` or ``file`` (exactly one), refreshed in the background."""

    def __init__(
        self,
        *,
        url: str | None = None,
        file: str | None = None,
        algorithms: Collection[str] = SUPPORTED_ALGORITHMS,
        refresh_s: float = 300.0,
        min_refresh_s: float = 10.0,
        fetch_timeout_s: float = 5.0,
    ) -> None:
        if (url is None) == (file is None):
            raise ValueError("a key set needs exactly one of `url` or `file`")
        self.url = url
        self.file = file
        self.algorithms = frozenset(algorithms)
        self.refresh_s = refresh_s
        self.min_refresh_s = min_refresh_s
        self.fetch_timeout_s = fetch_timeout_s
        self.fetches = 0  # load attempts, successful or not
        self._keys: dict[str, SigningKey] = {}
        self._last_attempt = -math.inf
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._keys)

    async def start(self) -> None:
        """Load the set and keep it fresh. A missing or broken file is a configuration error."""
        if self.url is not None:
            if self.url.startswith("http://"):
                log.warning("JWKS is fetched over plain http: anyone on the path could swap the keys")
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.fetch_timeout_s))
        async with self._lock:
            error = await self._load()
        if error is not None and self.file is not None:
            await self.close()
            raise JwksError(f"cannot load JWKS file {self.file}: {error}")
        self._task = asyncio.create_task(self._refresh_loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def cached(self, kid: str) -> SigningKey | None:
        return self._keys.get(kid)

    async def get(self, kid: str) -> SigningKey | None:
        """The key for ``kid``; an unknown kid triggers a reload unless one happened very recently."""
        key = self._keys.get(kid)
        if key is None:
            await self.refresh()
            key = self._keys.get(kid)
        return key

    async def refresh(self) -> bool:
        """Reload now unless a reload ran less than ``min_refresh_s`` ago; True when one ran and succeeded."""
        # Concurrent callers queue on the lock and then find the reload already done.
        async with self._lock:
            if time.monotonic() - self._last_attempt < self.min_refresh_s:
                return False
            return await self._load() is None

    async def _refresh_loop(self) -> None:
        while True:
            # Without any key, retry soon rather than waiting a full period; never
            # faster than the reload limit, or the loop would spin on refused reloads.
            interval = max(self.refresh_s if self._keys else 1.0, self.min_refresh_s)
            wait = self._last_attempt + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            await self.refresh()

    async def _load(self) -> str | None:
        """Replace the set with a freshly read one; the reason on failure (the old set stays)."""
        self._last_attempt = time.monotonic()
        self.fetches += 1
        try:
            document = await (self._fetch() if self.url is not None else asyncio.to_thread(self._read_file))
            keys = parse_jwks(document, self.algorithms)
        except JwksError as exc:
            reason = str(exc)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason = type(exc).__name__
        else:
            if keys:
                self._keys = keys
                return None
            reason = "no usable signing keys"
        log.warning("JWKS reload failed (%s); keeping the %d keys already loaded", reason, len(self._keys))
        return reason

    def _read_file(self) -> bytes:
        assert self.file is not None
        with open(Path(self.file), "rb") as handle:
            document = handle.read(MAX_DOCUMENT_BYTES + 1)
        if len(document) > MAX_DOCUMENT_BYTES:
            raise JwksError("document too large")
        return document

    async def _fetch(self) -> bytes:
        assert self._session is not None and self.url is not None
        # No redirects: one could move the fetch to another host or from https to http.
        async with self._session.get(self.url, allow_redirects=False) as response:
            if response.status != 200:
                raise JwksError(f"HTTP status {response.status}")
            document = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                document += chunk
                if len(document) > MAX_DOCUMENT_BYTES:
                    raise JwksError("document too large")
        return bytes(document)
