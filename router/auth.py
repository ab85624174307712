"""API key authentication: keyed hashes only, the request's Principal from here on."""

from __future__ import annotations

import hmac
import secrets

from core.errors import AuthenticationFailed

HASH_PREFIX = "hmac-sha256:"
KEY_PREFIX = "sk-"


def hash_api_key(key: str, pepper: bytes = b"") -> str:
    # hmac.digest: OpenSSL's HMAC in one call, with no HMAC object (the same digest as hmac.new's, in about half the time)
    return HASH_PREFIX + hmac.digest(pepper, key.encode("utf-8"), "sha256").hex()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def bearer_token(authorization: str | None) -> str:
    """The token of `Authorization: Bearer <token>`; a 401 for anything else."""
    if not authorization:
        raise AuthenticationFailed("Missing API key: send it as `Authorization: Bearer sk-...`.", code="missing_api_key")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("The Authorization header must be `Bearer <key>`.", code="invalid_authorization")
    return token
