"""JWT bearer tokens through the real gateway: scopes, tenant scoping, refusals, revocation."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from bench.fake_upstream import FakeUpstream
from router.auth import hash_api_key
from tests.conftest import make_config
from tests.integration.gateway_server import running_gateway

ISSUER, AUDIENCE = "https://idp.example.test/", "sluicegate"
OPS_KEY = "sk-jwt-ops-0123456789"


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _token(key: rsa.RSAPrivateKey, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, "sub": "user-1", "jti": uuid.uuid4().hex,
            "tenant": "tenant-a", "scope": "inference tenant:read", **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture
async def gateway(fake_upstream: FakeUpstream, signing_key: rsa.RSAPrivateKey, tmp_path: Path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**RSAAlgorithm.to_jwk(signing_key.public_key(), as_dict=True), "kid": "k1"}]}))
    tenants = [
        {"id": "tenant-a", "keys": []},
        {"id": "tenant-b", "keys": []},
        {"id": "ops", "keys": [{"id": "ops", "hash": hash_api_key(OPS_KEY), "scopes": ["ops:*"]}]},
    ]
    config = make_config(fake_upstream.url, tenants=tenants,
                         auth={"jwt": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(jwks)}})
    async with running_gateway(config) as running:
        yield running


async def _chat(http: aiohttp.ClientSession, base: str, token: str) -> tuple[int, Any]:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    async with http.post(f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json()


async def test_token_with_inference_scope_is_served(gateway, signing_key) -> None:
    base, _ = gateway
    async with aiohttp.ClientSession() as http:
        status, _ = await _chat(http, base, _token(signing_key))
        assert status == 200
        status, body = await _chat(http, base, _token(signing_key, scope="tenant:read"))
        assert status == 403 and body["error"]["type"] == "permission_error"


@pytest.mark.parametrize(
    "claims",
    [{"exp": int(time.time()) - 3600}, {"aud": "someone-else"}, {"iss": "https://evil.test/"}, {"tenant": "nobody"}],
)
async def test_bad_tokens_are_401(gateway, signing_key, claims: dict[str, Any]) -> None:
    base, _ = gateway
    async with aiohttp.ClientSession() as http:
        status, body = await _chat(http, base, _token(signing_key, **claims))
    assert status == 401 and body["error"]["type"] == "authentication_error"


async def test_forged_token_is_401(gateway) -> None:
    base, _ = gateway
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async with aiohttp.ClientSession() as http:
        status, _ = await _chat(http, base, _token(other))
    assert status == 401


async def test_token_sees_only_its_tenant(gateway, signing_key) -> None:
    base, _ = gateway
    headers = {"authorization": f"Bearer {_token(signing_key)}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/admin/v1/tenants/tenant-a", headers=headers) as r:
            assert r.status == 200
        async with http.get(f"{base}/admin/v1/tenants/tenant-b", headers=headers) as r:
            assert r.status == 404
        async with http.get(f"{base}/v1/ledger/usage?tenant=tenant-b", headers=headers) as r:
            assert r.status == 404


async def test_revoked_jti_is_refused_at_once(gateway, signing_key) -> None:
    base, _ = gateway
    jti = uuid.uuid4().hex
    token = _token(signing_key, jti=jti)
    async with aiohttp.ClientSession() as http:
        assert (await _chat(http, base, token))[0] == 200
        revoke = {"jti": jti, "exp": int(time.time()) + 300}
        async with http.post(f"{base}/admin/v1/tokens/revoke", json=revoke, headers={"authorization": f"Bearer {OPS_KEY}"}) as r:
            assert r.status == 200
        status, body = await _chat(http, base, token)
        assert status == 401 and body["error"]["code"] == "revoked_token"
        async with http.post(f"{base}/admin/v1/tokens/revoke", json=revoke, headers={"authorization": f"Bearer {token}"}) as r:
            assert r.status == 401


async def _post(http: aiohttp.ClientSession, base: str, path: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(f"{base}{path}", json=body, headers={"authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json()


SURFACES = [
    ("/v1/responses", {"model": "fake-model", "input": "hi", "max_output_tokens": 3}),
    ("/v1/messages", {"model": "fake-model", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/messages/count_tokens", {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}),
]


@pytest.mark.parametrize(("path", "body"), SURFACES)
async def test_every_surface_wants_the_inference_scope(gateway, signing_key, path: str, body: dict[str, Any]) -> None:
    base, _ = gateway
    async with aiohttp.ClientSession() as http:
        status, _ = await _post(http, base, path, _token(signing_key), body)
        assert status == 200
        status, refused = await _post(http, base, path, _token(signing_key, scope="tenant:read"), body)
    assert status == 403
    if path.startswith("/v1/messages"):
        assert refused["type"] == "error" and refused["error"]["type"] == "permission_error", refused
    else:
        assert refused["error"]["type"] == "permission_error", refused


async def test_a_token_may_upload_files_but_not_create_a_batch(gateway, signing_key) -> None:
    base, _ = gateway
    headers = {"authorization": f"Bearer {_token(signing_key)}"}
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "fake-model", "messages": []}}
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", json.dumps(line).encode(), filename="in.jsonl")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/files", data=form, headers=headers) as r:
            assert r.status == 200, await r.text()
            uploaded = await r.json()
        body = {"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        # A batch runs for up to a day as the key that made it, and stops when that key is revoked: a token is no such key.
        async with http.post(f"{base}/v1/batches", json=body, headers=headers) as r:
            assert r.status == 403
            assert (await r.json())["error"]["code"] == "api_key_required"
