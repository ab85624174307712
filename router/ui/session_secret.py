"""The secret that signs console sessions, shared by every process that serves the console.

``auth.console_secret`` (a secret reference, at least 32 characters) names it
for every worker and replica alike. Without it, ``sluicegate serve`` makes a
random one before it starts its workers and hands it to them in the
environment (``SESSION_SECRET_ENV``, read once by each worker and removed from
its environment), so the workers of one server share it; separate replicas
then each have their own, and a browser must stay with one replica (or the
config must name the secret). A process started any other way without either
makes its own.
"""

from __future__ import annotations

import os
import secrets

from core.config import Config, ConfigError
from router.jwt_auth import RedisJtiDenylist
from router.ui.session import SessionStore

SESSION_SECRET_ENV = "SLUICEGATE_CONSOLE_SECRET"
MIN_SECRET_CHARS = 32
SIGNED_OUT_PREFIX = "sg:console:signed-out:"
# Where the app keeps its ``SessionStore`` (``app.state``).
SESSIONS_STATE = "console_sessions"


def share_secret(config: Config) -> None:
    """In the serving process, before workers start: a random secret for them all, unless one is configured."""
    if config.auth.console_secret is None and not os.environ.get(SESSION_SECRET_ENV):
        os.environ[SESSION_SECRET_ENV] = secrets.token_urlsafe(48)


def console_secret(config: Config) -> bytes:
    """The configured secret, else the one the serving process shared, else a new one for this process alone."""
    ref = config.auth.console_secret
    shared = os.environ.pop(SESSION_SECRET_ENV, None)
    if ref is not None:
        try:
            value = ref.resolve()
        except ConfigError as exc:
            raise ConfigError(f"key `auth.console_secret`: {exc}") from None
        if len(value) < MIN_SECRET_CHARS:
            raise ConfigError(f"key `auth.console_secret`: the secret must be at least {MIN_SECRET_CHARS} characters")
        return value.encode()
    if shared:
        if len(shared) < MIN_SECRET_CHARS:
            raise ConfigError(f"environment variable {SESSION_SECRET_ENV}: the secret must be at least {MIN_SECRET_CHARS} characters")
        return shared.encode()
    return secrets.token_bytes(32)


def open_sessions(config: Config) -> SessionStore:
    """The console's sessions: signed-out ids in Redis when ``state.redis_url`` is set, else in this process."""
    redis_url = config.state.redis()
    signed_out = RedisJtiDenylist(redis_url, prefix=SIGNED_OUT_PREFIX) if redis_url else None
    return SessionStore(console_secret(config), signed_out)
