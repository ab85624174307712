"""Bearer JWTs (OIDC access tokens) as a second way in, next to API keys.

Accepted when signed by a key of the provider's set (RS256/ES256, ``router.jwks``),
``iss`` and ``aud`` match, ``exp``/``nbf``/``iat`` hold within ``leeway_s``, the
``jti`` is not revoked and the tenant exists and is enabled. The tenant gives
priority, weight, limits and budgets; the token gives who (``sub``) and scopes
(``scope``/``scp``), kept only if allowed: ``inference`` (the OpenAI endpoints),
``tenant:read``/``tenant:write`` (the caller's tenant), ``ops:read``/``ops:write``
(gateway-wide state; ``ops:*`` grants both). Refusals (401) name only the reason.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

import jwt
import redis.asyncio as redis
from redis.exceptions import RedisError

from core.config import JwtConfig, TenantConfig
from core.errors import AuthenticationFailed, GatewayError
from core.principal import Principal
from router.jwks import KeySet, SigningKey, token_header

ALLOWED_SCOPES = frozenset({"tenant:read", "tenant:write", "ops:*", "ops:read", "ops:write", "inference"})
MAX_VERIFIED_TOKENS = 10_000


# Sync (config file) or async (database) lookup; None when the tenant does not exist.
TenantLookup = Callable[[str], "TenantConfig | None | Awaitable[TenantConfig | None]"]


class DenylistUnavailable(GatewayError):
    """Revocations cannot be checked: refuse rather than let a revoked token through."""

    status = 503
    type = "server_error"
    code = "revocation_unavailable"
    retryable = True


class JtiDenylist(Protocol):
    async def is_revoked(self, jti: str) -> bool: ...

    # Refuse ``jti`` until ``until_epoch_s``, after which the token is refused as expired anyway.
    async def revoke(self, jti: str, until_epoch_s: float) -> None: ...


class MemoryJtiDenylist:
    """One replica's denylist: for a single process or tests."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    async def is_revoked(self, jti: str) -> bool:
        until = self._until.get(jti)
        return until is not None and until > time.time()

    async def revoke(self, jti: str, until_epoch_s: float) -> None:
        # Revocations are rare: each one also drops the entries that no longer matter.
        now = time.time()
        self._until = {j: u for j, u in self._until.items() if u > now}
        self._until[jti] = max(until_epoch_s, self._until.get(jti, 0.0))


class RedisJtiDenylist:
    """Shared by every replica: one key per revoked jti that expires with the token."""

    def __init__(self, url: str, *, prefix: str = "sg:jwt:revoked:", timeout_s: float = 1.0) -> None:
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    async def is_revoked(self, jti: str) -> bool:
        try:
            return bool(await self._redis.exists(self.prefix + jti))
        except (RedisError, OSError, TimeoutError) as exc:
            raise DenylistUnavailable(f"Token revocations cannot be checked ({type(exc).__name__}).") from None

    async def revoke(self, jti: str, until_epoch_s: float) -> None:
        try:
            # EXAT: Redis drops the entry when it can no longer matter (at once if already past).
            await self._redis.set(self.prefix + jti, b"1", exat=math.ceil(until_epoch_s))
        except (RedisError, OSError, TimeoutError) as exc:
            raise DenylistUnavailable(f"The revocation was not stored ({type(exc).__name__}).") from None

    async def close(self) -> None:
        await self._redis.aclose()


def looks_like_jwt(token: str) -> bool:
    """A compact token whose header names an ``alg``; an API key (``sk-...``) never is."""
    header = token_header(token)
    return header is not None and isinstance(header.get("alg"), str)


def _refused(reason: str, code: str = "invalid_token") -> AuthenticationFailed:
    return AuthenticationFailed(reason, code=code)


# Most specific first: several of these subclass others.
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "signature invalid"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
)


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token has no `{exc.claim}` claim"
    return next((reason for kind, reason in _REASONS if isinstance(exc, kind)), "malformed token")


def claim_at(claims: dict[str, Any], path: str) -> object:
    """A claim by name, else by dotted path; the full name wins so ``https://x.example/tenant`` works."""
    if path in claims:
        return claims[path]
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


@dataclass(slots=True, frozen=True)
class _Verified:
    """What a verified token says; kept so its next use skips parsing and the signature check."""

    key: SigningKey
    valid_until: float  # exp + leeway
    tenant_id: str
    subject: str
    jti: str | None
    scopes: frozenset[str]

    @classmethod
    def of(cls, key: SigningKey, claims: dict[str, Any], config: JwtConfig) -> _Verified:
        tenant_id = claim_at(claims, config.tenant_claim)
        if not isinstance(tenant_id, str) or not tenant_id:
            raise _refused("token has no tenant claim")
        # PyJWT has checked that `sub` and `jti`, when present, are strings.
        jti: str | None = claims.get("jti") or None
        subject: str | None = claims.get("sub") or jti
        if subject is None:
            raise _refused("token has no subject")
        return cls(key, float(claims["exp"]) + config.leeway_s, tenant_id, subject, jti, scopes_of(claims))


def scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str))
    return frozenset(found & ALLOWED_SCOPES)


class JwtAuthenticator:
    """Verifies bearer JWTs into a ``Principal``; ``start`` before use, ``close`` at shutdown."""

    def __init__(self, config: JwtConfig, tenant_lookup: TenantLookup, denylist: JtiDenylist) -> None:
        self.config = config
        self.keys = KeySet(
            url=config.jwks_url,
            file=config.jwks_file,
            algorithms=config.algorithms,
            refresh_s=config.refresh_s,
            min_refresh_s=config.min_refresh_s,
        )
        self._tenant_lookup = tenant_lookup
        self._denylist = denylist
        self._cache: dict[bytes, _Verified] = {}  # by SHA-256: a client reuses its token many times

    async def start(self) -> None:
        """Load the key set; raises ``JwksError`` for an unreadable file (an unreachable URL is retried)."""
        await self.keys.start()

    async def close(self) -> None:
        await self.keys.close()

    async def revoke(self, jti: str, exp_epoch_s: float) -> None:
        """Revoke a token at once on every replica sharing the denylist."""
        # A token is still accepted up to ``leeway_s`` past its exp: the entry must outlive that.
        await self._denylist.revoke(jti, exp_epoch_s + self.config.leeway_s)

    async def authenticate(self, token: str) -> Principal:
        # Imported here, not at the top: see the note on the imports.
        from core.principal import Principal

        verified = await self._verified(token)
        # Checked on every use, after the signature, so forged tokens cost no round trip.
        if verified.jti is not None and await self._denylist.is_revoked(verified.jti):
            raise _refused("token revoked", code="revoked_token")
        tenant = await self._tenant(verified.tenant_id)
        return Principal(
            tenant=tenant.id,
            key_id="jwt:" + verified.subject,
            scopes=verified.scopes,
            priority=tenant.priority,
            # The token's `exp`: a key minted with this token may not outlive it.
            expires_at=datetime.fromtimestamp(verified.valid_until - self.config.leeway_s, timezone.utc),
            weight=tenant.weight,
            tenant_limits=tenant.limits,
            tenant_budgets=tuple(tenant.budgets),
        )

    async def _verified(self, token: str) -> _Verified:
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(digest)
        # A key withdrawn from the set takes its tokens with it; a reload makes new key
        # objects, so the identity check also re-verifies every token once per reload.
        if hit is not None and time.time() < hit.valid_until and self.keys.cached(hit.key.kid) is hit.key:
            return hit
        key = await self._signing_key(token)
        verified = _Verified.of(key, self._verify(token, key), self.config)
        if len(self._cache) >= MAX_VERIFIED_TOKENS:
            del self._cache[next(iter(self._cache))]  # the oldest: dicts keep insertion order
        self._cache[digest] = verified
        return verified

    async def _signing_key(self, token: str) -> SigningKey:
        header = token_header(token)
        if header is None:
            raise _refused("malformed token")
        if header.get("alg") not in self.config.algorithms:
            raise _refused("algorithm not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _refused("token has no key id")
        key = await self.keys.get(kid)
        if key is None:
            raise _refused("unknown signing key")
        # The key's type fixes its algorithm: an RSA key never verifies an ES256 token.
        if key.alg != header["alg"]:
            raise _refused("algorithm does not match the signing key")
        return key

    def _verify(self, token: str, key: SigningKey) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.alg],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            expired = isinstance(exc, jwt.ExpiredSignatureError)
            raise _refused(_reason(exc), code="expired_token" if expired else "invalid_token") from None
        return claims

    async def _tenant(self, tenant_id: str) -> TenantConfig:
        found = self._tenant_lookup(tenant_id)
        tenant = await found if inspect.isawaitable(found) else found
        if tenant is None or tenant.disabled:
            raise _refused("unknown tenant" if tenant is None else "tenant disabled")
        return tenant
