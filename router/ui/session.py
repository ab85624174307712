"""Console sessions: a random id in an ``HttpOnly`` cookie, the rest held server-side.

A session keeps the keyed hash of the admin key it was opened with (never the
key), so every page asks the tenant store again: a key revoked, expired or
whose tenant was disabled ends its sessions at their next request. A session
opened through the OIDC provider keeps the tenant, subject and scopes its ID
token gave (never a token); its tenant is read again on every request too.
The store is bounded (the oldest session goes first) and each session ends
after ``IDLE_S`` without a request or ``MAX_AGE_S`` after sign-in, whichever
comes first. Sessions live in the process that opened them.

Every write carries the session's CSRF token in a hidden field; a write whose
``Origin`` or ``Sec-Fetch-Site`` names another site is refused before that.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from litestar import Request

COOKIE = "sg_console"
IDLE_S = 30 * 60
MAX_AGE_S = 12 * 60 * 60
MAX_SESSIONS = 10_000


@dataclass(slots=True, frozen=True)
class Identity:
    """Who signed in through the OIDC provider, as their ID token said: no token is kept."""

    tenant: str
    key_id: str  # "jwt:<sub>", as an API JWT's principal
    scopes: frozenset[str]


@dataclass(slots=True)
class Session:
    key_hash: str | None  # signed in with an admin key
    csrf: str
    opened: float
    seen: float
    identity: Identity | None = None  # signed in with the OIDC provider


class SessionStore:
    """Open sessions by the digest of their id; the id itself is only in the browser's cookie."""

    def __init__(self, capacity: int = MAX_SESSIONS, clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._capacity = capacity
        self._clock = clock

    def open(self, key_hash: str | None, identity: Identity | None = None) -> tuple[str, Session]:
        """A new session for the key with ``key_hash``, or for an OIDC ``identity``: its cookie value and record."""
        if (key_hash is None) == (identity is None):
            raise ValueError("a session is opened for exactly one of a key or an identity")
        now = self._clock()
        sid = secrets.token_urlsafe(32)
        session = Session(key_hash=key_hash, csrf=secrets.token_urlsafe(32), opened=now, seen=now, identity=identity)
        self._sessions[_digest(sid)] = session
        while len(self._sessions) > self._capacity:
            self._sessions.popitem(last=False)
        return sid, session

    def find(self, sid: str | None) -> Session | None:
        """The live session of cookie value ``sid``; an expired one is dropped."""
        if not sid:
            return None
        digest = _digest(sid)
        session = self._sessions.get(digest)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > IDLE_S or now - session.opened > MAX_AGE_S:
            del self._sessions[digest]
            return None
        session.seen = now
        self._sessions.move_to_end(digest)
        return session

    def close(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(_digest(sid), None)

    def __len__(self) -> int:
        return len(self._sessions)


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def csrf_matches(session: Session, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(session.csrf.encode(), token.encode())


def same_origin(request: Request[Any, Any, Any]) -> bool:
    """False when the browser says the request came from another site."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        # Browsers send Origin with every POST; a form posted from a sandboxed or opaque origin says "null".
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def cookie_header(sid: str, *, secure: bool, max_age: int = MAX_AGE_S) -> str:
    """The ``Set-Cookie`` value of a session: script-proof, this site only, ``Secure`` over TLS."""
    flags = f"{COOKIE}={sid}; Path=/ui; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    return flags + ("; Secure" if secure else "")


def clear_cookie_header(*, secure: bool) -> str:
    return cookie_header("", secure=secure, max_age=0)
