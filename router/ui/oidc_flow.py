"""The browser's side of an OIDC sign-in: state, nonce, PKCE and the pre-session that binds them.

``/ui/oidc/start`` opens a pre-session: a random id in a short-lived cookie
(``HttpOnly``, ``SameSite=Lax`` so that it comes back on the provider's
redirect, ``Secure`` over TLS) whose record, held here by the id's digest,
keeps the ``state``, the ``nonce`` and the PKCE verifier. The callback ends it
whatever happens: a state is used once, within ``PENDING_S``, and only by the
browser that started the sign-in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

PRE_COOKIE = "sg_oidc"
PENDING_S = 10 * 60
MAX_PENDING = 10_000
VERIFIER_BYTES = 48  # 64 characters: RFC 7636 asks for 43 to 128


class FlowError(Exception):
    """The callback does not continue a sign-in this browser started; the message says why, naming no value."""


@dataclass(slots=True, frozen=True)
class Pending:
    """One sign-in in progress."""

    state: str
    nonce: str
    verifier: str
    redirect_uri: str
    started: float


def random_token() -> str:
    """An unguessable value (256 bits, base64url) for ``state``, ``nonce`` and pre-session ids."""
    return secrets.token_urlsafe(32)


def new_verifier() -> str:
    """A PKCE code verifier: 64 characters of the unreserved set."""
    return secrets.token_urlsafe(VERIFIER_BYTES)


def s256_challenge(verifier: str) -> str:
    """The S256 code challenge of ``verifier``: base64url(SHA-256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class PendingSignIns:
    """Sign-ins in progress by the digest of their pre-session id; bounded, oldest dropped first."""

    def __init__(self, capacity: int = MAX_PENDING, clock: Callable[[], float] = time.monotonic) -> None:
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._capacity = capacity
        self._clock = clock

    def begin(self, redirect_uri: str) -> tuple[str, Pending]:
        """A new sign-in: the pre-session id for its cookie, and its state, nonce and verifier."""
        pre_sid = random_token()
        pending = Pending(random_token(), random_token(), new_verifier(), redirect_uri, self._clock())
        self._pending[_digest(pre_sid)] = pending
        while len(self._pending) > self._capacity:
            self._pending.popitem(last=False)
        return pre_sid, pending

    def finish(self, pre_sid: str | None, state: str | None) -> Pending:
        """The sign-in the callback continues, removed so it cannot be used again; ``FlowError`` otherwise."""
        pending = self._pending.pop(_digest(pre_sid), None) if pre_sid else None
        if pending is None:
            raise FlowError("This sign-in was not started in this browser, or was already used.")
        if self._clock() - pending.started > PENDING_S:
            raise FlowError("This sign-in took too long and has expired.")
        if not state or not hmac.compare_digest(pending.state.encode(), state.encode()):
            raise FlowError("The provider's answer does not belong to this sign-in.")
        return pending

    def __len__(self) -> int:
        return len(self._pending)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def pre_cookie_header(pre_sid: str, *, secure: bool, max_age: int = PENDING_S) -> str:
    """The pre-session's ``Set-Cookie``: script-proof, sent on the provider's top-level redirect back."""
    flags = f"{PRE_COOKIE}={pre_sid}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax"
    return flags + ("; Secure" if secure else "")
