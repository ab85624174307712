"""Console sessions: a signed, stateless cookie that any worker or replica can check.

The cookie (``HttpOnly``, ``SameSite=Strict``, ``Path=/ui``, ``Secure`` over
TLS) holds a compact msgspec (MessagePack) record signed with HMAC-SHA256: a
random session id, what the session holds (the keyed hash of the admin key it
was opened with, never the key; or the tenant, subject and scopes an OIDC ID
token gave, never a token), the CSRF token, when it was opened and when it was
last seen. The signing secret is ``auth.console_secret`` when configured, else
one the serving process makes at start and hands to its workers
(``router.ui.session_secret``), so a browser's next request may land on any
worker. A modified cookie, one signed with another secret, or one past its time
is no session at all.

Every page still asks the tenant store again: a key revoked, expired or whose
tenant was disabled (or an OIDC session's tenant disabled or removed) ends its
sessions at their next request. A session ends after ``IDLE_S`` without a
request (each signed-in answer re-issues the cookie with a new last-seen time,
so the idle timeout rolls) or ``MAX_AGE_S`` after sign-in, whichever comes
first. Sign-out, and a session ended by the tenant store, put its id in a
bounded set of signed-out ids until it would have expired anyway: in Redis
when ``state.redis_url`` is set (every worker and replica sees it), else in
this process only, so that without Redis a copy of a signed-out cookie still
opens pages on another worker until it expires (the browser that signed out
has dropped it).

Every write carries the session's CSRF token in a hidden field; a write whose
``Origin`` or ``Sec-Fetch-Site`` names another site is refused before that.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import msgspec
from litestar import Request

from router.jwt_auth import JtiDenylist

COOKIE = "sg_console"
IDLE_S = 30 * 60
MAX_AGE_S = 12 * 60 * 60
# How far ahead of this process's clock another worker's or replica's times may be.
CLOCK_SKEW_S = 60
MAX_SIGNED_OUT = 100_000
MAX_COOKIE_CHARS = 4096
_VERSION = "1"


@dataclass(slots=True, frozen=True)
class Identity:
    """Who signed in through the OIDC provider, as their ID token said: no token is kept."""

    tenant: str
    key_id: str  # "jwt:<sub>", as an API JWT's principal
    scopes: frozenset[str]


@dataclass(slots=True, frozen=True)
class Session:
    sid: str
    key_hash: str | None  # signed in with an admin key
    csrf: str
    opened: int  # epoch seconds
    seen: int
    identity: Identity | None = None  # signed in with the OIDC provider


class _Claims(msgspec.Struct, array_like=True, frozen=True):
    """The cookie's record: fields by position, so it stays small."""

    sid: str
    key_hash: str | None
    identity: tuple[str, str, list[str]] | None
    csrf: str
    opened: int
    seen: int


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Claims).decode


class Signer:
    """Signs values for one purpose with a key derived from the console's secret: ``1.<payload>.<signature>``."""

    def __init__(self, secret: bytes, purpose: str) -> None:
        if len(secret) < 32:
            raise ValueError("the console's session secret must be at least 32 bytes")
        # Derived, so that a value signed for one purpose is nothing for another.
        self._key = hmac.new(secret, f"sluicegate console {purpose} {_VERSION}".encode(), hashlib.sha256).digest()

    def sign(self, data: bytes) -> str:
        payload = _b64(data)
        return f"{_VERSION}.{payload}.{self._mac(payload)}"

    def verify(self, value: str | None) -> bytes | None:
        """What ``value`` was signed over; None when it is not a value this signer signed."""
        if not value or len(value) > MAX_COOKIE_CHARS or not value.isascii():
            return None
        version, _, rest = value.partition(".")
        payload, _, signature = rest.partition(".")
        if version != _VERSION or not hmac.compare_digest(self._mac(payload).encode(), signature.encode()):
            return None
        try:
            return _unb64(payload)
        except (binascii.Error, ValueError):
            return None

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())


class SessionStore:
    """Opens, checks and ends sessions; holds nothing per session but the ids signed out."""

    def __init__(self, secret: bytes, signed_out: JtiDenylist | None = None, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._signer = Signer(secret, "session")
        # Also where the OIDC sign-in records the states it has used (``router.ui.oidc_flow``).
        self.signed_out: JtiDenylist = signed_out if signed_out is not None else SignedOutIds(clock=clock)
        self._clock = clock

    def signer(self, purpose: str) -> Signer:
        """A signer with this store's secret for another of the console's purposes."""
        return Signer(self._secret, purpose)

    def open(self, key_hash: str | None, identity: Identity | None = None) -> tuple[str, Session]:
        """A new session for the key with ``key_hash``, or for an OIDC ``identity``: its cookie value and record."""
        if (key_hash is None) == (identity is None):
            raise ValueError("a session is opened for exactly one of a key or an identity")
        now = int(self._clock())
        session = Session(secrets.token_urlsafe(16), key_hash, secrets.token_urlsafe(24), now, now, identity)
        return self.seal(session), session

    def seal(self, session: Session) -> str:
        """The cookie value of ``session``: its record and the record's signature."""
        identity = session.identity
        claims = _Claims(
            session.sid, session.key_hash, None if identity is None else (identity.tenant, identity.key_id, sorted(identity.scopes)),
            session.csrf, session.opened, session.seen,
        )  # fmt: skip
        return self._signer.sign(_encode(claims))

    async def find(self, cookie: str | None) -> Session | None:
        """The live session of ``cookie``, seen now; None when it is forged, expired or signed out.

        Raises ``DenylistUnavailable`` (503) when the signed-out ids cannot be read.
        """
        session = self._verified(cookie)
        if session is None or await self.signed_out.is_revoked(session.sid):
            return None
        return session

    async def close(self, session: Session | str | None) -> None:
        """End a session (or the one of a cookie value) everywhere the signed-out ids are shared."""
        found = self._verified(session) if not isinstance(session, Session) else session
        if found is not None:
            await self.signed_out.revoke(found.sid, found.opened + MAX_AGE_S + CLOCK_SKEW_S)

    def _verified(self, cookie: str | None) -> Session | None:
        data = self._signer.verify(cookie)
        if data is None:
            return None
        try:
            claims = _decode(data)
        except msgspec.DecodeError:
            return None
        now = int(self._clock())
        if claims.opened > now + CLOCK_SKEW_S or claims.seen > now + CLOCK_SKEW_S:
            return None
        if now - claims.seen > IDLE_S or now - claims.opened > MAX_AGE_S:
            return None
        if (claims.key_hash is None) == (claims.identity is None):
            return None
        identity = None if claims.identity is None else Identity(claims.identity[0], claims.identity[1], frozenset(claims.identity[2]))
        return Session(claims.sid, claims.key_hash, claims.csrf, claims.opened, max(now, claims.seen), identity)

    def renewed(self, session: Session) -> str:
        """The cookie value of ``session`` seen now: re-issued with each answer, so the idle timeout rolls."""
        return self.seal(replace(session, seen=max(int(self._clock()), session.seen)))

    async def aclose(self) -> None:
        close = getattr(self.signed_out, "close", None)
        if close is not None:
            await close()


class SignedOutIds:
    """This process's signed-out session ids, each until its session would have expired; bounded, oldest dropped first."""

    def __init__(self, capacity: int = MAX_SIGNED_OUT, clock: Callable[[], float] = time.time) -> None:
        self._until: OrderedDict[str, float] = OrderedDict()
        self._capacity = capacity
        self._clock = clock

    async def is_revoked(self, jti: str) -> bool:
        until = self._until.get(jti)
        return until is not None and until > self._clock()

    async def revoke(self, jti: str, until_epoch_s: float) -> None:
        self._until[jti] = max(until_epoch_s, self._until.get(jti, 0.0))
        self._until.move_to_end(jti)
        if len(self._until) > self._capacity:
            now = self._clock()
            for sid in [s for s, until in self._until.items() if until <= now]:
                del self._until[sid]
            while len(self._until) > self._capacity:
                self._until.popitem(last=False)

    def __len__(self) -> int:
        return len(self._until)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def lifetime(session: Session) -> int:
    """Seconds left until ``session`` reaches its maximum age: how long its browser keeps the cookie."""
    return max(0, session.opened + MAX_AGE_S - session.seen)


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


def cookie_header(value: str, *, secure: bool, max_age: int = MAX_AGE_S) -> str:
    """The ``Set-Cookie`` value of a session: script-proof, this site only, ``Secure`` over TLS."""
    flags = f"{COOKIE}={value}; Path=/ui; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    return flags + ("; Secure" if secure else "")


def clear_cookie_header(*, secure: bool) -> str:
    return cookie_header("", secure=secure, max_age=0)
