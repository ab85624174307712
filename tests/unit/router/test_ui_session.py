"""Console sessions: signed cookies that any process with the secret can check, and nothing else can make.

A modified cookie, one signed with another secret, one past its idle or
maximum age, and one signed out are no session; the cookie holds the key's
keyed hash, never the key. Also: the cookie's flags, the origin check, and
where the secret comes from.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import msgspec
import pytest

from core.config import Config, ConfigError
from router.auth import hash_api_key
from router.ui.session import (
    IDLE_S,
    MAX_AGE_S,
    Identity,
    SessionStore,
    SignedOutIds,
    cookie_header,
    csrf_matches,
    same_origin,
)
from router.ui.session_secret import SESSION_SECRET_ENV, console_secret, open_sessions, share_secret

SECRET = b"the console secret: 32 bytes at least"
KEY = "sk-session-test-key-0123456789abcdef"
KEY_HASH = hash_api_key(KEY, b"pepper")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def stores(clock: Clock) -> tuple[SessionStore, SessionStore]:
    """Two processes (workers, replicas) with the same secret and the same signed-out ids."""
    shared = SignedOutIds(clock=clock)
    return SessionStore(SECRET, shared, clock=clock), SessionStore(SECRET, shared, clock=clock)


async def test_any_process_with_the_secret_finds_the_session_and_the_cookie_holds_no_key() -> None:
    clock = Clock()
    first, second = stores(clock)
    cookie, session = first.open(KEY_HASH)
    found = await second.find(cookie)
    assert found is not None
    assert (found.sid, found.key_hash, found.csrf, found.identity) == (session.sid, KEY_HASH, session.csrf, None)
    assert KEY not in cookie and len(cookie) < 400
    oidc_cookie, _ = first.open(None, Identity("globex", "jwt:bob", frozenset({"tenant:read", "tenant:write"})))
    oidc = await second.find(oidc_cookie)
    assert oidc is not None and oidc.identity == Identity("globex", "jwt:bob", frozenset({"tenant:read", "tenant:write"}))
    assert await second.find(None) is None and await second.find("") is None
    with pytest.raises(ValueError):
        first.open(None)


def _flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


async def test_a_modified_cookie_is_no_session() -> None:
    store, _ = stores(Clock())
    cookie, _ = store.open(KEY_HASH)
    version, payload, signature = cookie.split(".")
    # The record with another key hash, re-encoded but keeping the old signature.
    record = msgspec.msgpack.decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    record[1] = hash_api_key("sk-someone-else", b"pepper")
    forged = base64.urlsafe_b64encode(msgspec.msgpack.encode(record)).rstrip(b"=").decode()
    candidates = [
        f"{version}.{forged}.{signature}",
        _flip(cookie, 5),
        _flip(cookie, len(cookie) - 3),
        f"2.{payload}.{signature}",
        f"{version}.{payload}",
        cookie + "x",
        cookie[:-1] + "é",
        "x" * 5000,
    ]
    for candidate in candidates:
        assert await store.find(candidate) is None, candidate


async def test_a_cookie_signed_with_another_secret_is_no_session() -> None:
    clock = Clock()
    ours, _ = stores(clock)
    theirs = SessionStore(b"another secret that is long enough!!", clock=clock)
    cookie, _ = theirs.open(KEY_HASH)
    assert await theirs.find(cookie) is not None
    assert await ours.find(cookie) is None
    with pytest.raises(ValueError, match="32 bytes"):
        SessionStore(b"short")


async def test_sessions_expire_when_idle_and_at_their_maximum_age_and_renewal_rolls_the_idle_time() -> None:
    clock = Clock()
    store, other = stores(clock)
    cookie, _ = store.open(KEY_HASH)
    clock.now += IDLE_S - 1
    session = await other.find(cookie)
    assert session is not None
    renewed = other.renewed(session)
    clock.now += IDLE_S - 1
    assert await store.find(renewed) is not None  # seen again within the idle time
    assert await store.find(cookie) is None  # the old cookie was last seen too long ago
    # Renewed forever, a session still ends at its maximum age.
    cookie, _ = store.open(KEY_HASH)
    for _ in range(MAX_AGE_S // (IDLE_S - 1) + 1):
        clock.now += IDLE_S - 1
        found = await store.find(cookie)
        if found is None:
            break
        cookie = store.renewed(found)
    assert await store.find(cookie) is None
    # A cookie from the future (a clock far ahead, or a forged time) is refused as well.
    ahead = SessionStore(SECRET, clock=lambda: clock.now + 3600)
    assert await store.find(ahead.open(KEY_HASH)[0]) is None


async def test_sign_out_ends_the_session_in_every_process_sharing_the_signed_out_ids() -> None:
    clock = Clock()
    first, second = stores(clock)
    cookie, session = first.open(KEY_HASH)
    renewed = first.renewed(session)
    await first.close(cookie)
    assert await second.find(cookie) is None and await second.find(renewed) is None
    # A process with its own set (no Redis) does not know: the documented gap.
    alone = SessionStore(SECRET, clock=clock)
    assert await alone.find(cookie) is not None
    other_cookie, other = first.open(KEY_HASH)
    await second.close(other)
    assert await first.find(other_cookie) is None
    await first.close("not a cookie")  # nothing to end


async def test_the_signed_out_ids_are_bounded_and_forget_what_has_expired() -> None:
    clock = Clock()
    ids = SignedOutIds(capacity=2, clock=clock)
    await ids.revoke("a", clock.now + 10)
    await ids.revoke("b", clock.now + 1000)
    await ids.revoke("c", clock.now + 1000)
    assert len(ids) == 2 and not await ids.is_revoked("a") and await ids.is_revoked("b") and await ids.is_revoked("c")
    clock.now += 10
    await ids.revoke("d", clock.now + 1000)
    assert len(ids) == 2 and await ids.is_revoked("d")
    clock.now += 2000
    assert not await ids.is_revoked("d")


def test_csrf_tokens_must_match_exactly() -> None:
    _, session = SessionStore(SECRET).open("h")
    assert csrf_matches(session, session.csrf)
    assert not csrf_matches(session, None) and not csrf_matches(session, "") and not csrf_matches(session, session.csrf + "x")


def test_the_cookie_is_http_only_same_site_strict_and_secure_over_tls() -> None:
    plain = cookie_header("abc", secure=False)
    assert "HttpOnly" in plain and "SameSite=Strict" in plain and "Path=/ui" in plain and "Secure" not in plain
    assert cookie_header("abc", secure=True).endswith("; Secure")


class FakeRequest:
    def __init__(self, **headers: str) -> None:
        self.headers = {"host": "gw.example:8300", **headers}


def test_posts_from_another_site_are_recognised() -> None:
    ok: list[dict[str, Any]] = [{}, {"origin": "http://gw.example:8300"}, {"sec-fetch-site": "same-origin"}, {"sec-fetch-site": "none"}]
    bad: list[dict[str, Any]] = [
        {"origin": "https://evil.example"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
        {"origin": "null"},
    ]
    assert all(same_origin(FakeRequest(**h)) for h in ok)  # type: ignore[arg-type]
    assert not any(same_origin(FakeRequest(**h)) for h in bad)  # type: ignore[arg-type]


# --- where the secret comes from ---------------------------------------------------------


def _config(**auth: Any) -> Config:
    return msgspec.convert({"auth": auth, "state": {"ledger": "off"}}, Config)


def test_the_configured_secret_is_a_reference_resolved_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG_TEST_CONSOLE_SECRET", "s" * 40)
    monkeypatch.setenv(SESSION_SECRET_ENV, "w" * 40)
    assert console_secret(_config(console_secret={"env": "SG_TEST_CONSOLE_SECRET"})) == b"s" * 40
    assert SESSION_SECRET_ENV not in os.environ  # read once, then out of the environment
    monkeypatch.setenv("SG_TEST_CONSOLE_SECRET", "too short")
    with pytest.raises(ConfigError, match=r"auth\.console_secret.*32 characters"):
        console_secret(_config(console_secret={"env": "SG_TEST_CONSOLE_SECRET"}))
    monkeypatch.delenv("SG_TEST_CONSOLE_SECRET")
    with pytest.raises(ConfigError, match=r"auth\.console_secret.*SG_TEST_CONSOLE_SECRET"):
        open_sessions(_config(console_secret={"env": "SG_TEST_CONSOLE_SECRET"}))
    with pytest.raises(msgspec.ValidationError):
        _config(console_secret="a plain secret in the file")


def test_without_one_the_serving_process_shares_a_random_secret_with_its_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SESSION_SECRET_ENV, raising=False)
    config = _config()
    share_secret(config)
    shared = os.environ[SESSION_SECRET_ENV]
    assert len(shared) >= 32
    share_secret(config)  # a second call keeps the first secret
    assert os.environ[SESSION_SECRET_ENV] == shared
    # A worker: the shared secret, once.
    assert console_secret(config) == shared.encode()
    # A process on its own: a fresh random secret each time.
    assert console_secret(config) != console_secret(config)
    monkeypatch.setenv("SG_TEST_CONSOLE_SECRET", "c" * 32)
    monkeypatch.delenv(SESSION_SECRET_ENV, raising=False)
    share_secret(_config(console_secret={"env": "SG_TEST_CONSOLE_SECRET"}))
    assert SESSION_SECRET_ENV not in os.environ  # a configured secret needs no sharing
