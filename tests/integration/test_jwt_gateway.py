"""JWT revocation shared over a real Redis: a jti revoked on one replica is refused by all.

Each "replica" is its own ``JwtAuthenticator`` with its own Redis connection,
reading the same JWKS file, as two gateway processes would.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from core.config import JwtConfig, TenantConfig
from core.errors import AuthenticationFailed
from router.jwt_auth import DenylistUnavailable, JwtAuthenticator, RedisJtiDenylist

REDIS_URL = os.environ.get("SLUICEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ISSUER = "https://idp.example.test/"
AUDIENCE = "sluicegate"
LEEWAY_S = 30.0
TENANTS = {"acme": TenantConfig(id="acme", priority="high")}


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    client = aioredis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError):
        await client.aclose()
        pytest.skip(f"no Redis at {REDIS_URL}")
    name = f"sgtest-jwt-{uuid.uuid4().hex[:12]}:"
    yield name
    keys = [key async for key in client.scan_iter(match=name + "*", count=500)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def jwt_config(tmp_path: Path, signing_key: rsa.RSAPrivateKey) -> JwtConfig:
    public = RSAAlgorithm.to_jwk(signing_key.public_key(), as_dict=True)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{**public, "kid": "k1", "use": "sig"}]}))
    return JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=str(path), leeway_s=LEEWAY_S)


@pytest.fixture
async def replicas(jwt_config: JwtConfig, prefix: str) -> AsyncIterator[list[JwtAuthenticator]]:
    denylists = [RedisJtiDenylist(REDIS_URL, prefix=prefix) for _ in range(2)]
    auths = [JwtAuthenticator(jwt_config, TENANTS.get, denylist) for denylist in denylists]
    for auth in auths:
        await auth.start()
    yield auths
    for auth in auths:
        await auth.close()
    for denylist in denylists:
        await denylist.close()


def token(key: rsa.RSAPrivateKey, jti: str, exp: int, **claims: Any) -> str:
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-1", "tenant": "acme", "jti": jti, "exp": exp, **claims}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "k1"})


async def test_revoked_on_one_replica_is_refused_by_the_other(
    replicas: list[JwtAuthenticator], signing_key: rsa.RSAPrivateKey, prefix: str
) -> None:
    first, second = replicas
    exp = int(time.time()) + 600
    revoked = token(signing_key, "jti-revoked", exp, scope="inference")
    kept = token(signing_key, "jti-kept", exp)
    for auth in replicas:
        assert (await auth.authenticate(revoked)).key_id == "jwt:svc-1"
    await first.revoke("jti-revoked", exp)
    for auth in (second, first):
        with pytest.raises(AuthenticationFailed, match="^token revoked$"):
            await auth.authenticate(revoked)
        assert (await auth.authenticate(kept)).tenant == "acme"

    # The entry lives as long as the token could still be accepted, then Redis drops it.
    client = aioredis.from_url(REDIS_URL)
    try:
        ttl_s = await client.ttl(prefix + "jti-revoked")
        assert exp + LEEWAY_S - time.time() - 2 <= ttl_s <= exp + LEEWAY_S - time.time() + 2
        assert await client.exists(prefix + "jti-kept") == 0
    finally:
        await client.aclose()


async def test_revoking_a_long_expired_token_writes_nothing(replicas: list[JwtAuthenticator], prefix: str) -> None:
    await replicas[0].revoke("jti-old", time.time() - LEEWAY_S - 60)
    client = aioredis.from_url(REDIS_URL)
    try:
        assert await client.exists(prefix + "jti-old") == 0
    finally:
        await client.aclose()


async def test_unreachable_redis_refuses_rather_than_admits(
    jwt_config: JwtConfig, signing_key: rsa.RSAPrivateKey
) -> None:
    denylist = RedisJtiDenylist("redis://127.0.0.1:1/0", timeout_s=0.5)
    auth = JwtAuthenticator(jwt_config, TENANTS.get, denylist)
    await auth.start()
    try:
        with pytest.raises(DenylistUnavailable) as info:
            await auth.authenticate(token(signing_key, "jti-x", int(time.time()) + 60))
        assert info.value.status == 503
        with pytest.raises(DenylistUnavailable):
            await auth.revoke("jti-x", time.time() + 60)
    finally:
        await auth.close()
        await denylist.close()
