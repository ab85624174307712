"""A fake OIDC provider: discovery, a JWKS, ``/authorize`` and ``/token``, as an aiohttp server.

Its RSA key is made when it is created. ``/authorize`` signs in ``user`` (one
of ``users``, by name) at once and sends the browser back with a code and the
state; with ``user`` None it answers ``access_denied``. ``/token`` checks the
client (and its secret, when it has one), the redirect URI and the PKCE
verifier against the S256 challenge the code was issued for, uses each code
once, and answers an RS256 ID token carrying the user's claims and the nonce.
``id_token_claims`` overrides claims of the next tokens (an expired ``exp``, a
wrong ``nonce``); ``refusals`` records why token requests were refused.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

KID = "fake-oidc-1"
TOKEN_TTL_S = 300


def _b64(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass
class _Grant:
    user: str
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None


@dataclass
class FakeOidcProvider:
    client_id: str
    users: dict[str, dict[str, Any]]
    client_secret: str | None = None
    user: str | None = None
    id_token_claims: dict[str, Any] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    discoveries: int = 0
    url: str = ""
    _key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))
    _grants: dict[str, _Grant] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return self.url

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        return app

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": KID})

    async def _discovery(self, _: web.Request) -> web.Response:
        self.discoveries += 1
        return web.json_response({
            "issuer": self.issuer, "authorization_endpoint": self.url + "/authorize", "token_endpoint": self.url + "/token",
            "jwks_uri": self.url + "/jwks", "response_types_supported": ["code"], "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256"], "subject_types_supported": ["public"],
        })  # fmt: skip

    async def _jwks(self, _: web.Request) -> web.Response:
        numbers = self._key.public_key().public_numbers()
        jwk = {"kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256", "n": _b64(numbers.n), "e": _b64(numbers.e)}
        return web.json_response({"keys": [jwk]})

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("client_id") != self.client_id or q.get("response_type") != "code" or "redirect_uri" not in q:
            return web.Response(status=400, text="bad authorization request")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return web.Response(status=400, text="PKCE (S256) is required")
        back: dict[str, str] = {"state": q.get("state", "")}
        if self.user is None:
            back["error"] = "access_denied"
        else:
            code = secrets.token_urlsafe(24)
            self._grants[code] = _Grant(self.user, self.client_id, q["redirect_uri"], q["code_challenge"], q.get("nonce"))
            back["code"] = code
        raise web.HTTPFound(q["redirect_uri"] + "?" + urlencode(back))

    def _client_ok(self, request: web.Request, form: dict[str, str]) -> bool:
        if self.client_secret is None:
            return form.get("client_id") == self.client_id
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        return request.headers.get("authorization") == f"Basic {expected}"

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        grant = self._grants.pop(form.get("code", ""), None)  # a code is used once, even by a refused request
        reason = self._refusal(request, form, grant)
        if reason is not None or grant is None:
            self.refusals.append(reason or "invalid_grant")
            return web.json_response({"error": "invalid_grant" if reason != "invalid_client" else "invalid_client"}, status=400)
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": grant.user, "aud": self.client_id, "iat": now, "exp": now + TOKEN_TTL_S,
                  **({"nonce": grant.nonce} if grant.nonce else {}), **self.users[grant.user], **self.id_token_claims}  # fmt: skip
        return web.json_response({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "id_token": self.sign(claims)})

    def _refusal(self, request: web.Request, form: dict[str, str], grant: _Grant | None) -> str | None:
        if not self._client_ok(request, form):
            return "invalid_client"
        if form.get("grant_type") != "authorization_code" or grant is None:
            return "unknown or used code"
        if form.get("redirect_uri") != grant.redirect_uri:
            return "redirect_uri differs"
        if s256(form.get("code_verifier", "")) != grant.challenge:
            return "PKCE verifier does not match"
        return None


@asynccontextmanager
async def oidc_provider(provider: FakeOidcProvider, port: int = 0) -> AsyncIterator[FakeOidcProvider]:
    """Serve ``provider`` on 127.0.0.1 (``port``, or a free one) until the block ends; its ``url`` is set."""
    runner = web.AppRunner(provider.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    provider.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield provider
    finally:
        await runner.cleanup()
