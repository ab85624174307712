"""The console's OIDC sign-in: state, nonce and PKCE helpers, the provider client, and the flow over HTTP.

The provider is ``tests.fakes.oidc_provider`` in this event loop; the flow
tests run the real app under uvicorn (``tests.integration.gateway_server``).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
import msgspec
import pytest

from core.config import Config, TenantConfig
from core.config_oidc import ConsoleOidcConfig
from router.tenant_records import Tenant, TenantNotFound, TenantStore
from router.ui.console import identity_principal
from router.ui.oidc_client import OidcClient, SignInFailed, provider_error
from router.ui.oidc_flow import PENDING_S, FlowError, PendingSignIns, new_verifier, pre_cookie_header, s256_challenge
from router.ui.session import Identity, SignedOutIds, Signer
from tests.fakes.oidc_provider import FakeOidcProvider, oidc_provider
from tests.integration.gateway_server import running_gateway

CLIENT_ID = "sluicegate-console"
USERS = {
    "alice": {"tenant": "ops", "scope": "ops:* inference"},
    "bob": {"tenant": "globex", "scope": "tenant:read tenant:write"},
    "eve": {"tenant": "globex", "scope": "inference"},
}
REDIRECT = "http://127.0.0.1:1/ui/oidc/callback"
SECRET = b"a console secret of at least 32 bytes"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- state, nonce and PKCE -------------------------------------------------------------


def test_the_s256_challenge_is_rfc_7636s() -> None:
    # RFC 7636, appendix B.
    assert s256_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_verifiers_are_long_random_and_of_the_unreserved_set() -> None:
    verifiers = {new_verifier() for _ in range(50)}
    assert len(verifiers) == 50
    for verifier in verifiers:
        assert 43 <= len(verifier) <= 128 and re.fullmatch(r"[A-Za-z0-9._~-]+", verifier)


def flows(clock: Clock, secret: bytes = SECRET) -> PendingSignIns:
    return PendingSignIns(Signer(secret, "oidc pre-session"), SignedOutIds(clock=clock), clock=clock)


async def test_a_sign_in_is_finished_once_by_its_browser_and_state() -> None:
    clock = Clock()
    store = flows(clock)
    pre_cookie, pending = store.begin(REDIRECT)
    assert len({pending.state, pending.nonce, pending.verifier, pre_cookie}) == 4
    assert await store.finish(pre_cookie, pending.state) == pending
    with pytest.raises(FlowError, match="already used"):
        await store.finish(pre_cookie, pending.state)
    # Another process with the same secret and the same used states (Redis) finishes it too, once.
    shared = SignedOutIds(clock=clock)
    pre_cookie, pending = store.begin(REDIRECT)
    elsewhere = PendingSignIns(Signer(SECRET, "oidc pre-session"), shared, clock=clock)
    assert await elsewhere.finish(pre_cookie, pending.state) == pending
    with pytest.raises(FlowError, match="already used"):
        await PendingSignIns(Signer(SECRET, "oidc pre-session"), shared, clock=clock).finish(pre_cookie, pending.state)


async def test_a_wrong_state_or_cookie_ends_the_sign_in() -> None:
    store = flows(Clock())
    pre_cookie, pending = store.begin(REDIRECT)
    with pytest.raises(FlowError, match="does not belong"):
        await store.finish(pre_cookie, pending.state + "x")
    # Refused once, gone: the right state cannot follow a wrong one.
    with pytest.raises(FlowError):
        await store.finish(pre_cookie, pending.state)
    other_cookie, other = store.begin(REDIRECT)
    forged = flows(Clock(), b"another secret, 32 bytes or more!").begin(REDIRECT)[0]
    tampered = other_cookie[:-2] + ("AA" if not other_cookie.endswith("AA") else "BB")
    for cookie, state in ((None, other.state), ("", other.state), (forged, other.state), (tampered, other.state), (other_cookie, None)):
        with pytest.raises(FlowError):
            await store.finish(cookie, state)


async def test_a_sign_in_expires() -> None:
    clock = Clock()
    store = flows(clock)
    pre_cookie, pending = store.begin(REDIRECT)
    clock.now += PENDING_S + 1
    with pytest.raises(FlowError, match="expired"):
        await store.finish(pre_cookie, pending.state)


async def test_the_pre_session_cookie_keeps_no_secret_of_the_gateway() -> None:
    pre_cookie, pending = flows(Clock()).begin(REDIRECT)
    assert SECRET.decode() not in pre_cookie and re.fullmatch(r"1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}", pre_cookie)
    # A session cookie's signer cannot have made it: each purpose has its own key.
    assert Signer(SECRET, "session").verify(pre_cookie) is None


def test_the_pre_session_cookie_is_http_only_lax_short_and_secure_over_tls() -> None:
    plain = pre_cookie_header("abc", secure=False)
    assert "HttpOnly" in plain and "SameSite=Lax" in plain and f"Max-Age={PENDING_S}" in plain and "Secure" not in plain
    assert pre_cookie_header("abc", secure=True).endswith("; Secure")


def test_provider_error_codes_are_shown_only_when_they_look_like_codes() -> None:
    assert provider_error("access_denied") == "access_denied"
    assert provider_error("<script>") == provider_error("x" * 100) == provider_error(None) == "unrecognised error"


def test_the_config_needs_an_http_issuer_and_the_openid_scope() -> None:
    def load(**fields: Any) -> ConsoleOidcConfig:
        return msgspec.convert({"issuer": "https://idp.example", "client_id": CLIENT_ID, **fields}, ConsoleOidcConfig)

    assert load().redirect_path == "/ui/oidc/callback" and load().scopes == "openid profile"
    for bad in ({"issuer": "idp.example"}, {"scopes": "profile"}, {"redirect_path": "ui/cb"}, {"client_secret": "plain"}, {"extra": 1}):
        with pytest.raises(msgspec.ValidationError):
            load(**bad)


# --- the client against the fake provider ------------------------------------------------


@pytest.fixture
async def provider() -> AsyncIterator[FakeOidcProvider]:
    async with oidc_provider(FakeOidcProvider(client_id=CLIENT_ID, users=USERS, user="alice")) as fake:
        yield fake


def client_of(provider: FakeOidcProvider, **fields: Any) -> OidcClient:
    config = ConsoleOidcConfig(issuer=provider.issuer, client_id=CLIENT_ID, name="FakeID", timeout_s=2.0, **fields)
    return OidcClient(config, "tenant")


async def tenants(tenant_id: str) -> TenantConfig | None:
    return TenantConfig(id=tenant_id) if tenant_id in ("ops", "globex") else None


async def code_for(provider: FakeOidcProvider, url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url, allow_redirects=False) as answer:
        assert answer.status == 302
        return re.search(r"code=([^&]+)", answer.headers["location"]).group(1)  # type: ignore[union-attr]


async def test_a_code_and_its_verifier_give_the_principal_an_api_jwt_would(provider: FakeOidcProvider) -> None:
    client = client_of(provider)
    endpoints = await client.endpoints()
    verifier = new_verifier()
    url = client.authorize_url(endpoints, redirect_uri=REDIRECT, state="s", nonce="n-1", challenge=s256_challenge(verifier))
    id_token = await client.exchange(endpoints, code=await code_for(provider, url), verifier=verifier, redirect_uri=REDIRECT)
    principal = await client.principal(endpoints, id_token, nonce="n-1", tenants=tenants)
    assert (principal.tenant, principal.key_id, principal.scopes) == ("ops", "jwt:alice", frozenset({"ops:*", "inference"}))
    # Discovery is cached.
    await client.endpoints()
    assert provider.discoveries == 1


async def test_the_provider_refuses_a_wrong_pkce_verifier(provider: FakeOidcProvider) -> None:
    client = client_of(provider)
    endpoints = await client.endpoints()
    url = client.authorize_url(endpoints, redirect_uri=REDIRECT, state="s", nonce="n", challenge=s256_challenge(new_verifier()))
    code = await code_for(provider, url)
    with pytest.raises(SignInFailed) as refused:
        await client.exchange(endpoints, code=code, verifier=new_verifier(), redirect_uri=REDIRECT)
    assert refused.value.status == 401 and "invalid_grant" in refused.value.message and code not in refused.value.message
    assert provider.refusals == ["PKCE verifier does not match"]


@pytest.mark.parametrize(
    ("claims", "nonce", "reason"),
    [
        ({}, "another", "nonce"),
        ({"exp": int(time.time()) - 3600}, "n", "token expired"),
        ({"aud": "someone-else"}, "n", "wrong audience"),
        ({"azp": "someone-else", "aud": [CLIENT_ID, "someone-else"]}, "n", "azp"),
        ({"tenant": "nobody"}, "n", "unknown tenant"),
    ],
)
async def test_an_id_token_is_refused_for_its_nonce_expiry_audience_or_tenant(
    provider: FakeOidcProvider, claims: dict[str, Any], nonce: str, reason: str
) -> None:
    client = client_of(provider)
    endpoints = await client.endpoints()
    verifier = new_verifier()
    url = client.authorize_url(endpoints, redirect_uri=REDIRECT, state="s", nonce="n", challenge=s256_challenge(verifier))
    provider.id_token_claims = claims
    id_token = await client.exchange(endpoints, code=await code_for(provider, url), verifier=verifier, redirect_uri=REDIRECT)
    with pytest.raises(SignInFailed) as refused:
        await client.principal(endpoints, id_token, nonce=nonce, tenants=tenants)
    assert refused.value.status == 401 and reason in refused.value.message and id_token not in refused.value.message


async def test_a_provider_that_is_down_or_names_another_issuer_is_a_4xx() -> None:
    async with oidc_provider(FakeOidcProvider(client_id=CLIENT_ID, users=USERS)) as fake:
        down = client_of(fake)
        wrong = OidcClient(ConsoleOidcConfig(issuer=fake.issuer + "/other", client_id=CLIENT_ID), "tenant")
        with pytest.raises(SignInFailed) as refused:
            await wrong.endpoints()
        assert refused.value.status == 400
    with pytest.raises(SignInFailed) as refused:
        await down.endpoints()
    assert refused.value.status == 400 and "try again later" in refused.value.message


# --- the flow over HTTP --------------------------------------------------------------------


def gateway_config(provider: FakeOidcProvider, workdir: Path) -> Config:
    settings = {
        "server": {"log_level": "warning", "access_log": False},
        "auth": {"oidc": {"issuer": provider.issuer, "client_id": CLIENT_ID, "name": "FakeID"}},
        "tenants": [{"id": "ops"}, {"id": "globex"}],
        "state": {"ledger_path": str(workdir / "ledger.sqlite"), "ledger_spool_path": str(workdir / "spool")},
    }
    return msgspec.convert(settings, Config)


async def sign_in(http: aiohttp.ClientSession, base: str) -> tuple[str, aiohttp.ClientResponse]:
    """Follow start → provider → callback; the callback's URL and answer (its body read)."""
    async with http.get(base + "/ui/oidc/start", allow_redirects=False) as start:
        assert start.status == 303
        assert "code_challenge_method=S256" in start.headers["location"]
    async with http.get(start.headers["location"], allow_redirects=False) as authorize:
        callback = authorize.headers["location"]
    async with http.get(callback, allow_redirects=False) as answer:
        await answer.read()
        return callback, answer


async def test_the_flow_signs_in_refuses_replays_and_tampering_and_keeps_no_token(provider: FakeOidcProvider, tmp_path: Path) -> None:
    async with running_gateway(gateway_config(provider, tmp_path)) as (base, _):
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(base + "/ui/login") as login:
                assert "Sign in with FakeID" in await login.text()
            callback, answer = await sign_in(http, base)
            assert answer.status == 200 and "sg_console" in answer.headers.getall("set-cookie")[0]
            code = re.search(r"code=([^&]+)", callback).group(1)  # type: ignore[union-attr]
            assert all(code not in c and "eyJ" not in c for c in answer.headers.getall("set-cookie"))
            async with http.get(base + "/ui") as overview:
                page = await overview.text()
                assert overview.status == 200 and "<h1>Overview</h1>" in page and "ops/jwt:alice" in page
            csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
            # The same callback again: its pre-session is gone.
            async with http.get(callback, allow_redirects=False) as replay:
                body = await replay.text()
                assert replay.status == 400 and code not in body
            # A state changed on the way back.
            async with http.get(base + "/ui/oidc/start", allow_redirects=False) as start:
                location = start.headers["location"]
            async with http.get(location, allow_redirects=False) as authorize:
                tampered = re.sub(r"state=[^&]+", "state=forged", authorize.headers["location"])
            async with http.get(tampered, allow_redirects=False) as refused:
                assert refused.status == 400 and "does not belong" in await refused.text()
            # Consent denied at the provider.
            provider.user = None
            _, denied = await sign_in(http, base)
            assert denied.status == 403 and "access_denied" in await denied.text()
            # A user without an admin scope.
            provider.user = "eve"
            _, no_scope = await sign_in(http, base)
            assert no_scope.status == 403 and "admin scope" in await no_scope.text()
            # Sign-out ends the session the provider opened.
            async with http.post(base + "/ui/logout", data={"csrf": csrf}, allow_redirects=False) as out:
                assert out.status == 303
            async with http.get(base + "/ui", allow_redirects=False) as after:
                assert after.status == 303 and after.headers["location"] == "/ui/login"


class Tenants:
    """The one read of a tenant store that an OIDC session makes."""

    def __init__(self, *tenants: Tenant) -> None:
        self.tenants = {t.id: t for t in tenants}

    async def get_tenant(self, tenant_id: str) -> Tenant:
        if tenant_id not in self.tenants:
            raise TenantNotFound.named(tenant_id)
        return self.tenants[tenant_id]


async def test_an_oidc_session_follows_its_tenant_and_ends_when_it_is_disabled_or_gone() -> None:
    now = datetime.now(UTC)
    identity = Identity("globex", "jwt:bob", frozenset({"tenant:read"}))
    live = Tenant(id="globex", priority="high", weight=3, created_at=now, updated_at=now)
    principal = await identity_principal(cast(TenantStore, Tenants(live)), identity)
    assert principal is not None
    assert (principal.tenant, principal.key_id, principal.scopes, principal.priority, principal.weight) == (
        "globex", "jwt:bob", frozenset({"tenant:read"}), "high", 3,
    )  # fmt: skip
    disabled = Tenant(id="globex", disabled=True, created_at=now, updated_at=now)
    assert await identity_principal(cast(TenantStore, Tenants(disabled)), identity) is None
    assert await identity_principal(cast(TenantStore, Tenants()), identity) is None
