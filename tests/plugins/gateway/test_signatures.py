"""Each provider's proof: valid, wrong, missing, and always compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import pytest
from sluicegate_gateway.options import Binding, Repository
from sluicegate_gateway.signatures import ado_valid, github_valid, gitlab_valid, matching

from core.config import SecretRef
from tests.plugins.gateway.payloads import basic, github_signature

BODY = b'{"action": "opened"}'


def test_github_signature() -> None:
    good = github_signature("s3cret", BODY).encode()
    assert github_valid(b"s3cret", BODY, good)
    assert not github_valid(b"other", BODY, good)
    assert not github_valid(b"s3cret", BODY + b" ", good)  # the body is what is signed, byte for byte
    assert not github_valid(b"s3cret", BODY, None)
    assert not github_valid(b"s3cret", BODY, b"")
    assert not github_valid(b"s3cret", BODY, good.removeprefix(b"sha256="))
    assert not github_valid(b"s3cret", BODY, good.replace(b"sha256=", b"sha1="))
    assert not github_valid(b"s3cret", BODY, "sha256=é".encode())  # non-ASCII is refused, not raised


def test_gitlab_token() -> None:
    assert gitlab_valid(b"glpat-token", b"glpat-token")
    assert not gitlab_valid(b"glpat-token", b"glpat-toke")
    assert not gitlab_valid(b"glpat-token", b"glpat-token ")
    assert not gitlab_valid(b"glpat-token", None)
    assert not gitlab_valid(b"glpat-token", b"")


def test_ado_basic_credentials_or_shared_secret() -> None:
    assert ado_valid(b"hooks", b"pw", basic("hooks", "pw").encode(), None)
    assert not ado_valid(b"hooks", b"pw", basic("other", "pw").encode(), None)
    assert not ado_valid(b"hooks", b"pw", basic("hooks", "wrong").encode(), None)
    assert not ado_valid(b"hooks", b"pw", b"Bearer pw", None)
    assert not ado_valid(b"hooks", b"pw", b"Basic !!!not-base64", None)
    assert not ado_valid(b"hooks", b"pw", None, None)
    assert ado_valid(b"hooks", b"pw", None, b"pw")
    assert not ado_valid(b"hooks", b"pw", None, b"pw2")
    assert ado_valid(b"hooks", b"pw", b"Basic Zm9vOmJhcg==", b"pw")  # either proof suffices


def _binding(provider: str, repository: str, secret: str, index: int = 0) -> Binding:
    repo = Repository(provider=provider, repository=repository, tenant="t", secret=SecretRef(env="UNUSED"))
    return Binding(index, repo, secret.encode())


def test_matching_checks_every_candidate_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real: Callable[[Any, Any], bool] = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    candidates = [
        _binding("github", "acme/api", "one", 0),
        _binding("github", "acme/web", "two", 1),
        _binding("github", "acme/db", "one", 2),
    ]
    headers = {"x-hub-signature-256": github_signature("one", BODY).encode()}
    matched = matching("github", candidates, headers, BODY)
    assert [b.index for b in matched] == [0, 2]
    # No early exit: the first match does not stop the others being checked (one HMAC per distinct secret).
    assert len(calls) == 2
    calls.clear()
    assert matching("gitlab", [_binding("gitlab", "a/b", "tok")], {"x-gitlab-token": b"nope"}, BODY) == []
    assert len(calls) == 1
    calls.clear()
    ado = [_binding("ado", "o/p/r", "pw")]
    assert matching("ado", ado, {"authorization": basic("sluicegate", "pw").encode()}, BODY) == ado
    assert len(calls) == 2  # basic credentials and the shared-secret header, both compared
