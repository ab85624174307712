"""The console's OIDC relying party: discovery, the token exchange and the ID token.

Discovery (``{issuer}/.well-known/openid-configuration``) is cached for
``DISCOVERY_TTL_S``; a failed read is not cached. Each call to the provider
has the configured deadline, follows no redirect and reads at most
``MAX_RESPONSE_BYTES``. The ID token is verified by ``router.jwt_auth`` as an
API bearer token is (signature by a key of the provider's JWKS, ``iss``,
``aud`` = the client id, ``exp``), which also maps its claims to a
``Principal`` (tenant and scopes); this module adds the ``nonce`` and ``azp``
checks. Every failure is a ``SignInFailed`` with a 4xx status and a message
that names no code, token or secret.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import jwt
import msgspec

from core.config import ConfigError, JwtConfig
from core.config_oidc import ConsoleOidcConfig
from core.errors import AuthenticationFailed, GatewayError
from core.principal import Principal
from router.jwt_auth import JwtAuthenticator, MemoryJtiDenylist, TenantLookup

log = logging.getLogger("sluicegate.console")

DISCOVERY_PATH = "/.well-known/openid-configuration"
DISCOVERY_TTL_S = 3600.0
MAX_RESPONSE_BYTES = 1 << 20
_ERROR_CODE = re.compile(r"^[a-z_]{1,64}$")


class SignInFailed(Exception):
    """A sign-in that cannot go on: the status of its page and a message safe to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True, frozen=True)
class Endpoints:
    """What discovery gives the console."""

    authorization: str
    token: str
    jwks: str


def provider_error(code: str | None) -> str:
    """An OAuth ``error`` code fit to show (``access_denied``), or a placeholder for anything else."""
    return code if code is not None and _ERROR_CODE.fullmatch(code) else "unrecognised error"


def _url(value: object) -> str | None:
    return value if isinstance(value, str) and value.startswith(("https://", "http://")) else None


class OidcClient:
    """The configured provider, as the console uses it; discovery is its only state."""

    def __init__(self, config: ConsoleOidcConfig, tenant_claim: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.tenant_claim = tenant_claim
        self._clock = clock
        self._endpoints: tuple[float, Endpoints] | None = None
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.config.name or urlsplit(self.config.issuer).hostname or "your identity provider"

    async def endpoints(self) -> Endpoints:
        """The provider's endpoints, from the cache or a fresh discovery."""
        async with self._lock:
            cached = self._endpoints
            if cached is not None and self._clock() - cached[0] < DISCOVERY_TTL_S:
                return cached[1]
            document = await self._get_json(self.config.issuer.rstrip("/") + DISCOVERY_PATH)
            endpoints = self._endpoints_of(document)
            self._endpoints = (self._clock(), endpoints)
            return endpoints

    def _endpoints_of(self, document: dict[str, Any]) -> Endpoints:
        if document.get("issuer") != self.config.issuer:
            log.warning("OIDC discovery names another issuer than the configured `auth.oidc.issuer`")
            raise SignInFailed(400, f"Sign-in with {self.name} is not available: its discovery document names another issuer.")
        found = [_url(document.get(k)) for k in ("authorization_endpoint", "token_endpoint", "jwks_uri")]
        authorization, token, jwks = found
        if authorization is None or token is None or jwks is None:
            raise SignInFailed(400, f"Sign-in with {self.name} is not available: its discovery document is incomplete.")
        return Endpoints(authorization, token, jwks)

    def authorize_url(self, endpoints: Endpoints, *, redirect_uri: str, state: str, nonce: str, challenge: str) -> str:
        query = urlencode({
            "response_type": "code", "client_id": self.config.client_id, "redirect_uri": redirect_uri,
            "scope": self.config.scopes, "state": state, "nonce": nonce,
            "code_challenge": challenge, "code_challenge_method": "S256",
        })  # fmt: skip
        separator = "&" if "?" in endpoints.authorization else "?"
        return endpoints.authorization + separator + query

    async def exchange(self, endpoints: Endpoints, *, code: str, verifier: str, redirect_uri: str) -> str:
        """The ID token the token endpoint gives for ``code`` and the PKCE ``verifier``."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "client_id": self.config.client_id, "code_verifier": verifier}  # fmt: skip
        headers = {"accept": "application/json"}
        if self.config.client_secret is not None:
            headers["authorization"] = self._basic_auth()
        answer = await self._post_form(endpoints.token, form, headers)
        id_token = answer.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise SignInFailed(401, f"{self.name} answered without an ID token.")
        return id_token

    def _basic_auth(self) -> str:
        assert self.config.client_secret is not None
        try:
            secret = self.config.client_secret.resolve()
        except ConfigError as exc:
            log.error("the console's OIDC client secret cannot be read: %s", exc)
            raise SignInFailed(400, f"Sign-in with {self.name} is not available: the gateway's client secret cannot be read.") from None
        # RFC 6749 2.3.1: both parts form-encoded, then Basic.
        pair = f"{quote(self.config.client_id, safe='')}:{quote(secret, safe='')}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    async def principal(self, endpoints: Endpoints, id_token: str, *, nonce: str, tenants: TenantLookup) -> Principal:
        """The signed-in person as an API JWT with these claims would be; ``SignInFailed`` (401) otherwise."""
        config = JwtConfig(
            issuer=self.config.issuer, audience=self.config.client_id, jwks_url=endpoints.jwks,
            tenant_claim=self.tenant_claim, algorithms=list(self.config.algorithms), leeway_s=self.config.leeway_s,
        )  # fmt: skip
        verifier = JwtAuthenticator(config, tenants, MemoryJtiDenylist())
        verifier.keys.fetch_timeout_s = self.config.timeout_s
        await verifier.start()
        try:
            principal = await verifier.authenticate(id_token)
        except AuthenticationFailed as exc:
            raise SignInFailed(401, f"{self.name}'s ID token was refused: {exc.message}.") from None
        except GatewayError as exc:
            # The tenant store could not answer: its own status (503), as the console's pages show it.
            raise SignInFailed(exc.status, exc.message) from None
        finally:
            await verifier.close()
        # The signature, issuer, audience and expiry were verified above: the claims can be read as they are.
        claims: dict[str, Any] = jwt.decode(id_token, options={"verify_signature": False})
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(token_nonce.encode(), nonce.encode()):
            raise SignInFailed(401, f"{self.name}'s ID token was refused: it belongs to another sign-in (nonce).")
        azp = claims.get("azp")
        if azp is not None and azp != self.config.client_id:
            raise SignInFailed(401, f"{self.name}'s ID token was refused: it was issued to another client (azp).")
        return principal

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self._session() as session, session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise self._unavailable(f"HTTP status {response.status}")
                return self._json(await self._body(response))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unavailable(type(exc).__name__) from None

    async def _post_form(self, url: str, form: dict[str, str], headers: dict[str, str]) -> dict[str, Any]:
        try:
            async with self._session() as session, session.post(url, data=form, headers=headers, allow_redirects=False) as response:
                body = self._json(await self._body(response))
                if response.status == 200:
                    return body
                error = body.get("error")
                code = provider_error(error if isinstance(error, str) else None)
                raise SignInFailed(401, f"{self.name} refused the sign-in code ({code}).")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unavailable(type(exc).__name__) from None

    @staticmethod
    async def _body(response: aiohttp.ClientResponse) -> bytes:
        body = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_RESPONSE_BYTES:
                raise SignInFailed(400, "The sign-in provider's answer is too large.")
        return bytes(body)

    def _json(self, body: bytes) -> dict[str, Any]:
        try:
            value = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise self._unavailable("not JSON") from None
        if not isinstance(value, dict):
            raise self._unavailable("not a JSON object")
        return value

    def _unavailable(self, reason: str) -> SignInFailed:
        log.warning("the console's OIDC provider could not be used (%s)", reason)
        return SignInFailed(400, f"{self.name} could not be reached or gave an unusable answer: try again later.")
