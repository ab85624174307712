"""Bearer JWTs: key rotation, and verified tokens remembered per key set."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web

from core.config import TenantConfig
from core.errors import AuthenticationFailed
from router import jwt_auth
from router.jwt_auth import JwtAuthenticator, MemoryJtiDenylist
from tests.unit.router import test_jwt_auth
from tests.unit.router.test_jwt_auth import PrivateKey, config, jwks, refusal, sign, tenants

# Fixtures shared with test_jwt_auth; pytest finds them by these module-level names.
auth = test_jwt_auth.auth
keys = test_jwt_auth.keys

# --- key rotation --------------------------------------------------------------


class FakeIdp:
    """Serves a JWKS document that tests change at will, counting fetches."""

    def __init__(self, document: bytes) -> None:
        self.document = document
        self.status = 200
        self.fetches = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        return web.Response(body=self.document, status=self.status, content_type="application/json")


@pytest.fixture
async def idp(keys: dict[str, PrivateKey]) -> AsyncIterator[FakeIdp]:
    server = FakeIdp(jwks(keys, "rsa-1"))
    app = web.Application()
    app.router.add_get("/jwks", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}/jwks"
    yield server
    await runner.cleanup()


async def url_auth(idp: FakeIdp, min_refresh_s: float) -> JwtAuthenticator:
    auth = JwtAuthenticator(config(jwks_url=idp.url, min_refresh_s=min_refresh_s), tenants().get, MemoryJtiDenylist())
    await auth.start()
    return auth


async def test_rotation_on_unknown_kid_is_rate_limited(idp: FakeIdp, keys: dict[str, PrivateKey]) -> None:
    auth = await url_auth(idp, min_refresh_s=0.5)
    try:
        assert idp.fetches == 1
        old = sign(keys["rsa-1"], "rsa-1")
        assert (await auth.authenticate(old)).tenant == "acme"
        assert idp.fetches == 1
        idp.document = jwks(keys, "rsa-2")
        rotated = sign(keys["rsa-2"], "rsa-2")
        # Right after a fetch an unknown kid does not cause another one.
        assert await refusal(auth, rotated) == "unknown signing key"
        assert idp.fetches == 1
        await asyncio.sleep(0.55)
        assert (await auth.authenticate(rotated)).key_id == "jwt:user-1"
        assert idp.fetches == 2
        # The old key left the set: its tokens stop working without a restart, even one
        # verified (and remembered) before.
        assert await refusal(auth, old) == "unknown signing key"
        assert idp.fetches == 2
        await asyncio.sleep(0.55)
        forged = [sign(keys["forger"], f"made-up-{n}") for n in range(40)]
        results = await asyncio.gather(*(auth.authenticate(t) for t in forged), return_exceptions=True)
        assert all(isinstance(r, AuthenticationFailed) and r.message == "unknown signing key" for r in results)
        # Forty unknown kids at once cost the provider one fetch.
        assert idp.fetches == 3
    finally:
        await auth.close()


async def test_failed_reloads_keep_the_last_good_set(idp: FakeIdp, keys: dict[str, PrivateKey]) -> None:
    idp.status = 503
    auth = await url_auth(idp, min_refresh_s=0.2)
    try:
        # The provider was down at start: no keys yet, but the gateway starts.
        assert len(auth.keys) == 0
        token = sign(keys["rsa-1"], "rsa-1")
        assert await refusal(auth, token) == "unknown signing key"
        idp.status = 200
        await asyncio.sleep(0.25)
        assert (await auth.authenticate(token)).tenant == "acme"
        fetched = idp.fetches
        for status, document in ((500, jwks(keys, "rsa-2")), (200, b"<html>"), (200, b'{"keys": []}')):
            idp.status, idp.document = status, document
            await asyncio.sleep(0.25)
            assert await refusal(auth, sign(keys["rsa-2"], "rsa-2")) == "unknown signing key"
            assert (await auth.authenticate(token)).tenant == "acme"
        assert idp.fetches == fetched + 3
    finally:
        await auth.close()


async def test_periodic_reload_picks_up_a_rotated_file(tmp_path: Path, keys: dict[str, PrivateKey]) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(keys, "rsa-1"))
    auth = JwtAuthenticator(
        config(jwks_file=str(path), refresh_s=0.2, min_refresh_s=0.1), tenants().get, MemoryJtiDenylist()
    )
    await auth.start()
    try:
        assert auth.keys.cached("rsa-1") is not None and auth.keys.cached("ec-1") is None
        path.write_bytes(jwks(keys, "ec-1"))
        deadline = time.monotonic() + 5
        while auth.keys.cached("ec-1") is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # No token asked for it: the background reload found the new key by itself.
        assert auth.keys.cached("ec-1") is not None and auth.keys.cached("rsa-1") is None
        assert (await auth.authenticate(sign(keys["ec-1"], "ec-1"))).tenant == "acme"
    finally:
        await auth.close()


# --- verified tokens are remembered ----------------------------------------------


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts full verifications (PyJWT decodes) of tokens."""
    calls: list[str] = []
    real = jwt.decode

    def spy(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt_auth.jwt, "decode", spy)
    return calls


async def test_a_reused_token_is_verified_once_per_key_set(
    auth: JwtAuthenticator, keys: dict[str, PrivateKey], decodes: list[str]
) -> None:
    token = sign(keys["rsa-1"], "rsa-1")
    for _ in range(3):
        assert (await auth.authenticate(token)).key_id == "jwt:user-1"
    assert len(decodes) == 1
    # A reload makes new key objects: what was verified against the old set is verified again.
    await asyncio.sleep(auth.config.min_refresh_s)
    assert await auth.keys.refresh()
    assert (await auth.authenticate(token)).tenant == "acme"
    assert len(decodes) == 2


async def test_a_remembered_token_still_expires_and_its_tenant_is_still_checked(
    tmp_path: Path, keys: dict[str, PrivateKey], decodes: list[str]
) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(keys, "rsa-1"))
    known = tenants()
    auth = JwtAuthenticator(config(jwks_file=str(path), leeway_s=0), known.get, MemoryJtiDenylist())
    await auth.start()
    try:
        exp = int(time.time()) + 2
        short = sign(keys["rsa-1"], "rsa-1", exp=exp)
        lasting = sign(keys["rsa-1"], "rsa-1")
        assert (await auth.authenticate(short)).tenant == "acme"
        assert (await auth.authenticate(lasting)).tenant == "acme"
        await asyncio.sleep(exp - time.time() + 0.05)
        assert await refusal(auth, short) == "token expired"
        known["acme"] = TenantConfig(id="acme", disabled=True)
        assert await refusal(auth, lasting) == "tenant disabled"
        assert decodes.count(lasting) == 1
    finally:
        await auth.close()
