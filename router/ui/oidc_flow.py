"""The browser's side of an OIDC sign-in: state, nonce, PKCE and the pre-session that binds them.

``/ui/oidc/start`` opens a pre-session: a short-lived cookie (``HttpOnly``,
``SameSite=Lax`` so that it comes back on the provider's redirect, ``Secure``
over TLS) holding the ``state``, the ``nonce``, the PKCE verifier and when the
sign-in started, signed with the console's secret (``router.ui.session``), so
the callback may land on any worker or replica that shares it. The callback
ends it whatever happens: a state is used once (it joins the console's
signed-out ids, shared through Redis when there is one), within
``PENDING_S``, and only by the browser that started the sign-in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from router.jwt_auth import JtiDenylist
from router.ui.session import Signer

PRE_COOKIE = "sg_oidc"
PENDING_S = 10 * 60
USED_PREFIX = "oidc-state:"  # used states share the set of signed-out session ids
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
    started: int  # epoch seconds


def random_token() -> str:
    """An unguessable value (256 bits, base64url) for ``state`` and ``nonce``."""
    return secrets.token_urlsafe(32)


def new_verifier() -> str:
    """A PKCE code verifier: 64 characters of the unreserved set."""
    return secrets.token_urlsafe(VERIFIER_BYTES)


def s256_challenge(verifier: str) -> str:
    """The S256 code challenge of ``verifier``: base64url(SHA-256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class _PreSession(msgspec.Struct, array_like=True, frozen=True):
    state: str
    nonce: str
    verifier: str
    redirect_uri: str
    started: int


_decode = msgspec.msgpack.Decoder(_PreSession).decode


class PendingSignIns:
    """Sign-ins in progress, each in its browser's signed cookie; the states already used, in ``used``."""

    def __init__(self, signer: Signer, used: JtiDenylist, clock: Callable[[], float] = time.time) -> None:
        self._signer = signer
        self._used = used
        self._clock = clock

    def begin(self, redirect_uri: str) -> tuple[str, Pending]:
        """A new sign-in: the value of its pre-session cookie, and its state, nonce and verifier."""
        pending = Pending(random_token(), random_token(), new_verifier(), redirect_uri, int(self._clock()))
        record = _PreSession(pending.state, pending.nonce, pending.verifier, redirect_uri, pending.started)
        return self._signer.sign(msgspec.msgpack.encode(record)), pending

    async def finish(self, cookie: str | None, state: str | None) -> Pending:
        """The sign-in the callback continues, marked used so it cannot be used again; ``FlowError`` otherwise.

        Raises ``DenylistUnavailable`` (503) when the used states cannot be read or written.
        """
        data = self._signer.verify(cookie)
        try:
            record = _decode(data) if data is not None else None
        except msgspec.DecodeError:
            record = None
        used = USED_PREFIX + record.state if record is not None else ""
        if record is None or await self._used.is_revoked(used):
            raise FlowError("This sign-in was not started in this browser, or was already used.")
        # Refused or not, this pre-session is spent: the right state cannot follow a wrong one.
        await self._used.revoke(used, record.started + PENDING_S + 60)
        if self._clock() - record.started > PENDING_S:
            raise FlowError("This sign-in took too long and has expired.")
        if not state or not hmac.compare_digest(record.state.encode(), state.encode()):
            raise FlowError("The provider's answer does not belong to this sign-in.")
        return Pending(record.state, record.nonce, record.verifier, record.redirect_uri, record.started)


def pre_cookie_header(value: str, *, secure: bool, max_age: int = PENDING_S) -> str:
    """The pre-session's ``Set-Cookie``: script-proof, sent on the provider's top-level redirect back."""
    flags = f"{PRE_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax"
    return flags + ("; Secure" if secure else "")
