"""Each provider's proof that a delivery came from it, checked on the raw body before anything parses it.

- GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body under the secret>``.
- GitLab: ``X-Gitlab-Token: <the secret token>``.
- Azure DevOps: ``Authorization: Basic base64(user:secret)`` (the service hook's basic authentication),
  or ``X-Sluicegate-Secret: <secret>`` (a header the service hook is told to send).

Every comparison is ``hmac.compare_digest``; tokens are compared as SHA-256
digests so that not even their length leaks. The repository is in the body, so
a delivery is checked against every secret configured for its provider, each
one every time (no early exit: how long a check takes says nothing about which
secret, if any, matched); the body is parsed only once one has.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

from sluicegate_gateway.options import Binding

SHARED_SECRET_HEADER = "x-sluicegate-secret"


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(hashlib.sha256(a).digest(), hashlib.sha256(b).digest())


def github_valid(secret: bytes, body: bytes, signature: bytes | None) -> bool:
    expected = b"sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest().encode("ascii")
    return hmac.compare_digest(expected, signature if signature is not None else b"") and signature is not None


def gitlab_valid(secret: bytes, token: bytes | None) -> bool:
    return _same(secret, token if token is not None else b"") and token is not None


def _basic_credentials(authorization: bytes | None) -> bytes | None:
    if authorization is None:
        return None
    scheme, _, value = authorization.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def ado_valid(username: bytes, secret: bytes, authorization: bytes | None, shared: bytes | None) -> bool:
    """Basic credentials ``username:secret``, or the shared-secret header; both are checked, either suffices."""
    credentials = _basic_credentials(authorization)
    basic = _same(username + b":" + secret, credentials if credentials is not None else b"") and credentials is not None
    header = _same(secret, shared if shared is not None else b"") and shared is not None
    return basic | header


def matching(provider: str, candidates: Sequence[Binding], headers: Mapping[str, bytes], body: bytes) -> list[Binding]:
    """The entries whose secret this delivery proves; every candidate is checked."""
    matched: list[Binding] = []
    # Entries sharing a secret (an organisation's repositories) share one HMAC of the body.
    signed: dict[bytes, bool] = {}
    for binding in candidates:
        if provider == "github":
            if binding.secret not in signed:
                signed[binding.secret] = github_valid(binding.secret, body, headers.get("x-hub-signature-256"))
            ok = signed[binding.secret]
        elif provider == "gitlab":
            ok = gitlab_valid(binding.secret, headers.get("x-gitlab-token"))
        else:
            user = binding.repo.username.encode("utf-8")
            ok = ado_valid(user, binding.secret, headers.get("authorization"), headers.get(SHARED_SECRET_HEADER))
        if ok:
            matched.append(binding)
    return matched
