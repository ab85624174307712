"""Bearer JWTs: what is accepted, what is refused and why, and key rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from core.config import JwtConfig, TenantConfig
from core.errors import AuthenticationFailed
from router.jwks import JwksError, parse_jwks
from router.jwt_auth import JwtAuthenticator, MemoryJtiDenylist, looks_like_jwt

ISSUER = "https://idp.example.test/"
AUDIENCE = "sluicegate"
ROOT = Path(__file__).resolve().parents[3]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    return {
        "rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa-2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "forger": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec-1": ec.generate_private_key(ec.SECP256R1()),
    }


def jwk(kid: str, key: PrivateKey, **extra: Any) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        out: dict[str, Any] = RSAAlgorithm.to_jwk(public, as_dict=True)
    else:
        out = ECAlgorithm.to_jwk(public, as_dict=True)
    return {**out, "kid": kid, "use": "sig", **extra}


def jwks(keys: dict[str, PrivateKey], *kids: str) -> bytes:
    return json.dumps({"keys": [jwk(kid, keys[kid]) for kid in kids]}).encode()


def sign(key: PrivateKey, kid: str, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "tenant": "acme",
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "scope": "inference tenant:read admin",
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], signature: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(signature(signing_input.encode()))}"


def tenants() -> dict[str, TenantConfig]:
    return {
        "acme": msgspec.convert(
            {
                "id": "acme",
                "priority": "high",
                "weight": 3,
                "limits": {"rpm": 60},
                "budgets": [{"kind": "tokens", "period": "daily", "limit": 1000}],
            },
            TenantConfig,
        ),
        "gone": TenantConfig(id="gone", disabled=True),
    }


def config(**overrides: Any) -> JwtConfig:
    raw: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "min_refresh_s": 0.5, **overrides}
    return msgspec.convert(raw, JwtConfig)


@pytest.fixture
async def auth(tmp_path: Path, keys: dict[str, PrivateKey]) -> AsyncIterator[JwtAuthenticator]:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(keys, "rsa-1", "ec-1"))
    authenticator = JwtAuthenticator(config(jwks_file=str(path)), tenants().get, MemoryJtiDenylist())
    await authenticator.start()
    yield authenticator
    await authenticator.close()


async def refusal(auth: JwtAuthenticator, token: str) -> str:
    with pytest.raises(AuthenticationFailed) as info:
        await auth.authenticate(token)
    assert info.value.status == 401
    # No piece of the token (header, claims, signature) comes back in the message.
    assert not [part for part in token.split(".") if len(part) >= 8 and part in info.value.message]
    return info.value.message


async def test_rs256_token_gives_the_tenants_principal(auth: JwtAuthenticator, keys: dict[str, PrivateKey]) -> None:
    principal = await auth.authenticate(sign(keys["rsa-1"], "rsa-1"))
    acme = tenants()["acme"]
    assert (principal.tenant, principal.key_id) == ("acme", "jwt:user-1")
    # "admin" is not an allowed scope and is dropped.
    assert principal.scopes == frozenset({"inference", "tenant:read"})
    assert (principal.priority, principal.weight) == ("high", 3)
    assert principal.tenant_limits == acme.limits and principal.tenant_limits.rpm == 60
    assert principal.tenant_budgets == tuple(acme.budgets) and len(principal.tenant_budgets) == 1
    assert principal.key_limits is None and principal.key_budgets == ()


async def test_es256_token_with_scp_list_and_audience_list(auth: JwtAuthenticator, keys: dict[str, PrivateKey]) -> None:
    token = sign(keys["ec-1"], "ec-1", scope=None, scp=["ops:*", "bogus"], aud=["other", AUDIENCE], sub=None)
    principal = await auth.authenticate(token)
    assert principal.scopes == frozenset({"ops:*"})
    assert principal.has_scope("ops:write")
    # Without `sub` the token id names the caller.
    assert principal.key_id.startswith("jwt:") and len(principal.key_id) == 4 + 32


async def test_leeway_accepts_slight_clock_skew(auth: JwtAuthenticator, keys: dict[str, PrivateKey]) -> None:
    now = int(time.time())
    token = sign(keys["rsa-1"], "rsa-1", exp=now - 10, nbf=now + 10, iat=now + 10)
    assert (await auth.authenticate(token)).tenant == "acme"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": -100}, "token expired"),
        ({"nbf": 100}, "token not yet valid"),
        ({"iat": 100}, "token not yet valid"),
        ({"iss": "https://evil.example.test/"}, "wrong issuer"),
        ({"aud": "someone-else"}, "wrong audience"),
        ({"aud": ["a", "b"]}, "wrong audience"),
        ({"exp": None}, "token has no `exp` claim"),
        ({"iss": None}, "token has no `iss` claim"),
        ({"tenant": None}, "token has no tenant claim"),
        ({"tenant": ["acme"]}, "token has no tenant claim"),
        ({"tenant": "nobody-here"}, "unknown tenant"),
        ({"tenant": "gone"}, "tenant disabled"),
        ({"sub": None, "jti": None}, "token has no subject"),
    ],
)
async def test_refused_claims(
    auth: JwtAuthenticator, keys: dict[str, PrivateKey], claims: dict[str, Any], reason: str
) -> None:
    now = int(time.time())
    relative = {"exp", "nbf", "iat"}
    claims = {k: now + v if k in relative and v is not None else v for k, v in claims.items()}
    message = await refusal(auth, sign(keys["rsa-1"], "rsa-1", **claims))
    assert message == reason


async def test_forged_signature_with_a_known_kid(auth: JwtAuthenticator, keys: dict[str, PrivateKey]) -> None:
    assert await refusal(auth, sign(keys["forger"], "rsa-1")) == "signature invalid"
    # A valid token with one byte of its signature changed.
    head, body, sig = sign(keys["rsa-1"], "rsa-1").split(".")
    tampered_sig = ("A" if sig[10] != "A" else "B").join((sig[:10], sig[11:]))
    assert await refusal(auth, f"{head}.{body}.{tampered_sig}") == "signature invalid"
    # A valid signature over a payload whose claims were edited afterwards.
    evil_body = b64(
        json.dumps(
            {**jwt.decode(sign(keys["rsa-1"], "rsa-1"), options={"verify_signature": False}), "tenant": "gone"}
        ).encode()
    )
    assert await refusal(auth, f"{head}.{evil_body}.{sig}") == "signature invalid"


async def test_alg_none_is_refused(auth: JwtAuthenticator) -> None:
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "tenant": "acme", "exp": int(time.time()) + 60}
    unsigned = jwt.encode(payload, None, algorithm="none", headers={"kid": "rsa-1"})
    assert await refusal(auth, unsigned) == "malformed token"
    with_junk_signature = handmade({"alg": "none", "kid": "rsa-1"}, payload, lambda _: b"junk")
    assert await refusal(auth, with_junk_signature) == "algorithm not allowed"


async def test_hs256_with_the_public_key_as_secret_is_refused(
    auth: JwtAuthenticator, keys: dict[str, PrivateKey]
) -> None:
    pem = (
        keys["rsa-1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "tenant": "acme", "exp": int(time.time()) + 60}
    for secret in (pem, json.dumps(jwk("rsa-1", keys["rsa-1"])).encode()):
        token = handmade(
            {"alg": "HS256", "kid": "rsa-1"}, payload, lambda m, s=secret: hmac.new(s, m, hashlib.sha256).digest()
        )
        assert await refusal(auth, token) == "algorithm not allowed"


async def test_alg_must_match_the_keys_type(auth: JwtAuthenticator, keys: dict[str, PrivateKey]) -> None:
    # An ES256 token naming an RSA key, and an RS256 token naming the EC key.
    es_token = jwt.encode({"tenant": "acme"}, keys["ec-1"], algorithm="ES256", headers={"kid": "rsa-1"})
    rs_token = jwt.encode({"tenant": "acme"}, keys["rsa-1"], algorithm="RS256", headers={"kid": "ec-1"})
    for token in (es_token, rs_token):
        assert await refusal(auth, token) == "algorithm does not match the signing key"


async def test_algorithm_allow_list(tmp_path: Path, keys: dict[str, PrivateKey]) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(keys, "rsa-1", "ec-1"))
    auth = JwtAuthenticator(config(jwks_file=str(path), algorithms=["ES256"]), tenants().get, MemoryJtiDenylist())
    await auth.start()
    try:
        assert auth.keys.cached("rsa-1") is None and auth.keys.cached("ec-1") is not None
        assert await refusal(auth, sign(keys["rsa-1"], "rsa-1")) == "algorithm not allowed"
        assert (await auth.authenticate(sign(keys["ec-1"], "ec-1"))).tenant == "acme"
    finally:
        await auth.close()


async def test_unknown_or_missing_kid(auth: JwtAuthenticator, keys: dict[str, PrivateKey]) -> None:
    assert await refusal(auth, sign(keys["rsa-2"], "rsa-2")) == "unknown signing key"
    no_kid = jwt.encode({"tenant": "acme"}, keys["rsa-1"], algorithm="RS256")
    assert await refusal(auth, no_kid) == "token has no key id"


@pytest.mark.parametrize("token", ["", "sk-abc", "a.b.c", "a.b", "x" * 20_000, "eyJhbGciOiJSUzI1NiJ9..sig"])
async def test_malformed_tokens(auth: JwtAuthenticator, token: str) -> None:
    assert await refusal(auth, token) == "malformed token"


async def test_revoked_jti_is_refused_until_it_would_expire(
    auth: JwtAuthenticator, keys: dict[str, PrivateKey]
) -> None:
    exp = int(time.time()) + 300
    token = sign(keys["rsa-1"], "rsa-1", jti="jti-1", exp=exp)
    other = sign(keys["rsa-1"], "rsa-1", jti="jti-2", exp=exp)
    assert (await auth.authenticate(token)).tenant == "acme"
    await auth.revoke("jti-1", exp)
    assert await refusal(auth, token) == "token revoked"
    assert (await auth.authenticate(other)).tenant == "acme"


async def test_memory_denylist_forgets_expired_entries() -> None:
    denylist = MemoryJtiDenylist()
    await denylist.revoke("old", time.time() - 1)
    await denylist.revoke("new", time.time() + 60)
    assert not await denylist.is_revoked("old")
    assert await denylist.is_revoked("new")
    for n in range(2000):
        await denylist.revoke(f"gone-{n}", time.time() - 1)
    assert len(denylist._until) <= 2 and await denylist.is_revoked("new")


@pytest.mark.parametrize(
    ("claim", "claims"),
    [
        ("org.id", {"org": {"id": "acme"}, "tenant": None}),
        ("https://sluicegate.example/tenant", {"https://sluicegate.example/tenant": "acme", "tenant": None}),
    ],
)
async def test_tenant_claim_paths(
    tmp_path: Path, keys: dict[str, PrivateKey], claim: str, claims: dict[str, Any]
) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(keys, "rsa-1"))
    known = tenants()

    async def lookup(tenant_id: str) -> TenantConfig | None:
        return known.get(tenant_id)

    auth = JwtAuthenticator(config(jwks_file=str(path), tenant_claim=claim), lookup, MemoryJtiDenylist())
    await auth.start()
    try:
        assert (await auth.authenticate(sign(keys["rsa-1"], "rsa-1", **claims))).tenant == "acme"
        assert await refusal(auth, sign(keys["rsa-1"], "rsa-1", tenant="acme")) == "token has no tenant claim"
    finally:
        await auth.close()


def test_looks_like_jwt(keys: dict[str, PrivateKey]) -> None:
    assert looks_like_jwt(sign(keys["rsa-1"], "rsa-1"))
    header_without_alg = f"{b64(b'{}')}.{b64(b'{}')}.c2ln"
    not_json = f"{b64(b'not json')}.{b64(b'{}')}.c2ln"
    for token in ("sk-" + "a" * 43, "", "a.b.c", "a.b", header_without_alg, not_json, "x" * 20_000):
        assert not looks_like_jwt(token)


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"jwks_file": "a", "jwks_url": "https://idp/jwks"},
        {"jwks_url": "ftp://idp/jwks"},
        {"jwks_file": "a", "algorithms": ["HS256"]},
        {"jwks_file": "a", "algorithms": ["none"]},
        {"jwks_file": "a", "algorithms": []},
        {"jwks_file": "a", "refresh_s": 5, "min_refresh_s": 10},
        {"jwks_file": "a", "leeway": 5},
    ],
)
def test_config_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"issuer": ISSUER, "audience": AUDIENCE, **raw}, JwtConfig)


def test_config_defaults() -> None:
    cfg = msgspec.convert({"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": "https://idp/jwks"}, JwtConfig)
    assert (cfg.tenant_claim, cfg.algorithms, cfg.leeway_s) == ("tenant", ["RS256", "ES256"], 30.0)
    assert (cfg.refresh_s, cfg.min_refresh_s) == (300.0, 10.0)


def test_jwks_keeps_only_usable_signing_keys(keys: dict[str, PrivateKey]) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p384 = ec.generate_private_key(ec.SECP384R1())
    private_members = {**jwk("private", keys["rsa-2"]), **RSAAlgorithm.to_jwk(keys["rsa-2"], as_dict=True)}
    private_members["kid"] = "private"
    document = {
        "keys": [
            jwk("good", keys["rsa-1"]),
            jwk("good", keys["rsa-2"]),  # a repeated kid: the first wins
            jwk("small", small),
            jwk("p384", p384),
            jwk("enc", keys["rsa-1"], use="enc"),
            jwk("pinned-wrong", keys["rsa-1"], alg="HS256"),
            jwk("ec", keys["ec-1"], alg="ES256"),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            private_members,
            "not an object",
        ]
    }
    parsed = parse_jwks(json.dumps(document).encode(), {"RS256", "ES256"})
    assert set(parsed) == {"good", "ec", "private"}
    assert parsed["good"].key.public_numbers() == keys["rsa-1"].public_key().public_numbers()
    assert (parsed["good"].alg, parsed["ec"].alg) == ("RS256", "ES256")
    # Private members are never used: the key is public only.
    assert isinstance(parsed["private"].key, rsa.RSAPublicKey)
    for bad in (b"not json", b"[]", b'{"keys": {}}'):
        with pytest.raises(JwksError):
            parse_jwks(bad, {"RS256"})


async def test_unreadable_jwks_file_fails_start(tmp_path: Path) -> None:
    auth = JwtAuthenticator(config(jwks_file=str(tmp_path / "missing.json")), tenants().get, MemoryJtiDenylist())
    with pytest.raises(JwksError):
        await auth.start()

