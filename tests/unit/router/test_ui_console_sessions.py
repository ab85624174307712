"""Console sessions and the sign-in limit over HTTP: the real app under uvicorn in this event loop.

The gateway signs with a configured ``auth.console_secret``, so the test can
make cookies as another process with the same secret would (or with another
secret, or too long ago) and see the console answer each.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest

from core.config import Config
from router.auth import hash_api_key
from router.tenant_records import KeyCreate
from router.ui.login_limit import PER_ADDRESS
from router.ui.session import COOKIE, IDLE_S, MAX_AGE_S, SessionStore
from tests.integration.gateway_server import running_gateway

SECRET_ENV = "SG_TEST_CONSOLE_SESSIONS_SECRET"
SECRET = "a console secret shared by every replica, 32+ chars"
OPS_KEY = "sk-console-sessions-ops-0123456789abcdef"


def _config(workdir: Path) -> Config:
    settings = {
        "server": {"log_level": "warning", "access_log": False},
        "auth": {"console_secret": {"env": SECRET_ENV}},
        "tenants": [{"id": "ops", "keys": [{"id": "ops-admin", "hash": hash_api_key(OPS_KEY), "scopes": ["ops:*"]}]}],
        "state": {"ledger_path": str(workdir / "ledger.sqlite"), "ledger_spool_path": str(workdir / "spool")},
    }
    return msgspec.convert(settings, Config)


@pytest.fixture
async def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    async with running_gateway(_config(tmp_path)) as (url, _):
        yield url


def _client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _sign_in(http: aiohttp.ClientSession, base: str, key: str = OPS_KEY) -> aiohttp.ClientResponse:
    async with http.post(base + "/ui/login", data={"key": key}, allow_redirects=False) as answer:
        await answer.read()
        return answer


async def _page(base: str, cookie: str, path: str = "/ui/tenants") -> aiohttp.ClientResponse:
    """``path`` with only ``cookie`` (no jar): 200 for a session, 303 to the sign-in page for anything else."""
    async with aiohttp.ClientSession() as http, http.get(base + path, headers={"cookie": f"{COOKIE}={cookie}"}, allow_redirects=False) as r:
        await r.read()
        return r


def _session_cookie(answer: aiohttp.ClientResponse) -> str:
    value = answer.cookies[COOKIE].value
    assert value
    return value


async def test_a_session_is_re_issued_and_a_modified_foreign_or_expired_cookie_is_signed_out(base: str) -> None:
    async with _client() as http:
        signed_in = await _sign_in(http, base)
        assert signed_in.status == 303 and signed_in.headers["location"] == "/ui"
        cookie = _session_cookie(signed_in)
        assert OPS_KEY not in cookie
        page = await _page(base, cookie)
        assert page.status == 200
        # Each answer re-issues the cookie, with the same flags, so the idle timeout rolls.
        reissued = page.headers["set-cookie"]
        assert reissued.startswith(f"{COOKIE}=") and "HttpOnly" in reissued and "SameSite=Strict" in reissued and "Path=/ui" in reissued
        # The browser keeps it no longer than the session may live.
        assert MAX_AGE_S - 60 <= int(re.search(r"Max-Age=(\d+)", reissued).group(1)) <= MAX_AGE_S  # type: ignore[union-attr]

    key_hash = hash_api_key(OPS_KEY)
    # Another process with the same secret: its cookie opens pages here.
    elsewhere, _ = SessionStore(SECRET.encode()).open(key_hash)
    assert (await _page(base, elsewhere)).status == 200
    flipped = cookie[:-3] + ("A" if cookie[-3] != "A" else "B") + cookie[-2:]
    foreign, _ = SessionStore(b"another secret, not the gateway's, 32+").open(key_hash)
    idle, _ = SessionStore(SECRET.encode(), clock=lambda: time.time() - IDLE_S - 5).open(key_hash)
    too_old, _ = SessionStore(SECRET.encode(), clock=lambda: time.time() - MAX_AGE_S - 5).open(key_hash)
    for bad in (flipped, foreign, idle, too_old, "garbage"):
        answer = await _page(base, bad)
        assert answer.status == 303 and answer.headers["location"] == "/ui/login", bad
        assert f"{COOKIE}=;" in answer.headers["set-cookie"] and "Max-Age=0" in answer.headers["set-cookie"]


async def test_sign_out_ends_the_session_even_for_a_kept_copy_of_its_cookie(base: str) -> None:
    async with _client() as http:
        cookie = _session_cookie(await _sign_in(http, base))
        async with http.get(base + "/ui/tenants") as page:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text()).group(1)  # type: ignore[union-attr]
        async with http.post(base + "/ui/logout", data={"csrf": csrf}, allow_redirects=False) as out:
            assert out.status == 303 and out.headers["location"] == "/ui/login"
    # A copy of the cookie kept from before the sign-out opens nothing.
    assert (await _page(base, cookie)).status == 303


async def test_a_revoked_key_ends_its_sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    async with running_gateway(_config(tmp_path)) as (url, gateway), _client() as http:
        created = await gateway.tenants.create_key("ops", KeyCreate(id="temporary", scopes=["ops:*"]), "test")
        cookie = _session_cookie(await _sign_in(http, url, created.key))
        assert (await _page(url, cookie)).status == 200
        await gateway.tenants.revoke_key("ops", "temporary", "test")
        assert (await _page(url, cookie)).status == 303


async def test_failed_sign_ins_are_limited_per_address_and_a_success_is_not_slowed(base: str) -> None:
    async with _client() as http:
        started = time.monotonic()
        assert (await _sign_in(http, base)).status == 303
        assert time.monotonic() - started < 2
        for _ in range(PER_ADDRESS - 1):
            assert (await _sign_in(http, base, "sk-wrong-key")).status == 401
        # A success clears the address's failures.
        assert (await _sign_in(http, base)).status == 303
        for _ in range(PER_ADDRESS):
            assert (await _sign_in(http, base, "sk-wrong-key")).status == 401
        async with http.post(base + "/ui/login", data={"key": "sk-wrong-key"}, allow_redirects=False) as limited:
            page = await limited.text()
            assert limited.status == 429 and 1 <= int(limited.headers["retry-after"]) <= 60
            assert "Too many failed sign-ins" in page and 'data-field="key"' in page
        # While the address is over its limit, no key is checked: a guesser learns nothing from a hit.
        assert (await _sign_in(http, base)).status == 429
