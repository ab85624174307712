"""Console sessions: bounded, expiring, found only by their id; the cookie's flags; the origin check."""

from __future__ import annotations

from typing import Any

from router.ui.session import IDLE_S, MAX_AGE_S, SessionStore, cookie_header, csrf_matches, same_origin


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_is_found_by_its_id_only_and_holds_no_key() -> None:
    store = SessionStore(clock=Clock())
    sid, session = store.open("hmac-sha256:" + "0" * 64)
    assert store.find(sid) is session
    assert store.find(sid + "x") is None and store.find(None) is None and store.find("") is None
    assert sid not in repr(store._sessions)  # stored by digest
    store.close(sid)
    assert store.find(sid) is None


def test_sessions_expire_when_idle_and_at_their_maximum_age() -> None:
    clock = Clock()
    store = SessionStore(clock=clock)
    sid, _ = store.open("h")
    clock.now += IDLE_S - 1
    assert store.find(sid) is not None
    clock.now += IDLE_S + 1
    assert store.find(sid) is None
    sid, _ = store.open("h")
    for _ in range(MAX_AGE_S // (IDLE_S - 1) + 1):
        clock.now += IDLE_S - 1
        store.find(sid)
    assert store.find(sid) is None


def test_the_store_is_bounded_dropping_the_oldest() -> None:
    store = SessionStore(capacity=2, clock=Clock())
    first, _ = store.open("a")
    second, _ = store.open("b")
    third, _ = store.open("c")
    assert len(store) == 2
    assert store.find(first) is None and store.find(second) is not None and store.find(third) is not None


def test_csrf_tokens_must_match_exactly() -> None:
    _, session = SessionStore().open("h")
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
