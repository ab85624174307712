"""Sign-in to the console through an OIDC provider, in headless Chromium.

The provider is ``tests.fakes.oidc_provider`` on this test session's event
loop; the gateway is a subprocess configured with ``auth.oidc`` pointing at it.
An operator and a tenant admin sign in through the provider; a replayed or
tampered callback and a refused consent end on the sign-in error page.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.browser.conftest import _settings
from tests.e2e.conftest import free_port, spawn
from tests.fakes.oidc_provider import FakeOidcProvider, oidc_provider

CLIENT_ID = "sluicegate-console"
USERS = {
    "alice": {"tenant": "ops", "scope": "ops:*", "name": "Alice Operator"},
    "bob": {"tenant": "globex", "scope": "tenant:read tenant:write", "name": "Bob Admin"},
}


@dataclass
class OidcConsole:
    url: str
    provider: FakeOidcProvider


@pytest.fixture(scope="module")
async def oidc_console(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OidcConsole]:
    async with oidc_provider(
        FakeOidcProvider(client_id=CLIENT_ID, users=USERS, client_secret="s3cret-" + secrets.token_hex(8))
    ) as provider:
        workdir = tmp_path_factory.mktemp("oidc-gateway")
        keys = {name: f"sk-oidc-{name}-{secrets.token_hex(12)}" for name in ("ops", "admin", "other")}
        settings = _settings("http://127.0.0.1:9/v1", keys, workdir)
        secret_file = workdir / "client-secret"
        secret_file.write_text(provider.client_secret or "", encoding="utf-8")
        oidc = {"issuer": provider.issuer, "client_id": CLIENT_ID, "client_secret": {"file": str(secret_file)}, "name": "FakeID"}
        settings["auth"] = {"oidc": oidc}
        config = workdir / "sluicegate.yaml"
        config.write_bytes(msgspec.yaml.encode(settings))
        port = free_port()
        args = [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(port)]
        # In a thread: the provider answers on this loop meanwhile.
        gateway = await asyncio.to_thread(spawn, args, workdir / "gateway.log", f"http://127.0.0.1:{port}", "/healthz")
        try:
            yield OidcConsole(gateway.url, provider)
        finally:
            gateway.stop()


@pytest.fixture
async def context(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1360, "height": 960})
    yield context
    await context.close()


async def through_provider(context: Any, console: OidcConsole, user: str | None) -> Any:
    """A page that pressed "Sign in with FakeID" as ``user`` (None: refusing consent), after the last redirect."""
    console.provider.user = user
    page = await context.new_page()
    await page.goto(console.url + "/ui/login")
    assert await page.locator("#oidc-sign-in").inner_text() == "Sign in with FakeID"
    await page.click("#oidc-sign-in")
    return page


async def no_token_in_cookies(context: Any) -> None:
    for cookie in await context.cookies():
        assert "eyJ" not in cookie["value"], cookie["name"]
        if cookie["name"] == "sg_console":
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"


async def test_an_operator_signs_in_through_the_provider(context: Any, oidc_console: OidcConsole, artifacts: Path) -> None:
    page = await through_provider(context, oidc_console, "alice")
    await page.wait_for_url(re.compile(r"/ui$"))
    assert await page.locator("h1").inner_text() == "Overview"
    assert "ops/jwt:alice" in await page.locator(".who").inner_text()
    await page.screenshot(path=str(artifacts / "oidc-overview.png"), full_page=True)
    await no_token_in_cookies(context)
    # Sign-out ends the session.
    await page.click(".signout button")
    await page.wait_for_url(re.compile(r"/ui/login$"))
    assert (await page.goto(oidc_console.url + "/ui/tenants")).url.endswith("/ui/login")


async def test_a_tenant_admin_signs_in_and_sees_only_their_tenant(context: Any, oidc_console: OidcConsole, artifacts: Path) -> None:
    page = await through_provider(context, oidc_console, "bob")
    await page.wait_for_url(re.compile(r"/ui/tenants/globex/usage$"))
    await page.screenshot(path=str(artifacts / "oidc-tenant-usage.png"), full_page=True)
    for path in ("/ui/tenants/initech", "/ui/tenants/initech/usage", "/ui/audit?tenant=initech"):
        response = await page.goto(oidc_console.url + path)
        assert response.status == 404, path
        assert "Initech" not in await page.content()
    for path in ("/ui/config", "/ui/models"):
        assert (await page.goto(oidc_console.url + path)).status == 403, path
    await page.goto(oidc_console.url + "/ui/tenants")
    assert page.url.endswith("/ui/tenants/globex")


async def test_a_replayed_or_tampered_callback_is_refused(context: Any, oidc_console: OidcConsole, artifacts: Path) -> None:
    callbacks: list[str] = []
    page = await context.new_page()
    page.on("request", lambda request: callbacks.append(request.url) if "/ui/oidc/callback" in request.url else None)
    oidc_console.provider.user = "alice"
    await page.goto(oidc_console.url + "/ui/login")
    await page.click("#oidc-sign-in")
    await page.wait_for_url(re.compile(r"/ui$"))
    code = re.search(r"code=([^&]+)", callbacks[0]).group(1)  # type: ignore[union-attr]
    replay = await page.goto(callbacks[0])
    assert replay.status == 400
    assert await page.locator("h1").inner_text() == "Sign-in failed"
    assert code not in await page.content()
    await page.screenshot(path=str(artifacts / "oidc-replayed.png"), full_page=True)
    # A fresh sign-in whose state is changed on its way back.
    start = await page.request.get(oidc_console.url + "/ui/oidc/start", max_redirects=0)
    authorize = await page.request.get(start.headers["location"], max_redirects=0)
    tampered = re.sub(r"state=[^&]+", "state=" + secrets.token_urlsafe(32), authorize.headers["location"])
    refused = await page.goto(tampered)
    assert refused.status == 400 and "does not belong" in await page.locator("#signin-error").inner_text()
    await no_token_in_cookies(context)


async def test_a_refused_consent_shows_the_sign_in_error(context: Any, oidc_console: OidcConsole) -> None:
    page = await through_provider(context, oidc_console, None)
    await page.wait_for_url(re.compile(r"/ui/oidc/callback"))
    assert await page.locator("h1").inner_text() == "Sign-in failed"
    assert "access_denied" in await page.locator("#signin-error").inner_text()
