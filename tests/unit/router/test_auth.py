from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timezone

import pytest

from core.config import KeyConfig, TenantConfig
from core.errors import AuthenticationFailed
from core.principal import Principal, principal_for
from router.auth import bearer_token, hash_api_key, new_api_key


def test_bearer_token() -> None:
    assert bearer_token("Bearer sk-good") == "sk-good"
    assert bearer_token("bearer   sk-good ") == "sk-good"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic sk-good", "sk-good"])
def test_malformed_authorization_is_401(header: str | None) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        bearer_token(header)
    assert info.value.status == 401
    assert "sk-good" not in info.value.message


def test_keyed_hash() -> None:
    assert hash_api_key("sk-x").startswith("hmac-sha256:") and len(hash_api_key("sk-x")) == 12 + 64
    assert hash_api_key("sk-x", b"p1") != hash_api_key("sk-x", b"p2")
    # HMAC-SHA256 of the key under the pepper, as stored hashes were made: a change of how it is computed must keep it
    assert hash_api_key("sk-x", b"p1") == "hmac-sha256:" + hmac.new(b"p1", b"sk-x", hashlib.sha256).hexdigest()
    assert hash_api_key("sk-\u00e9") == "hmac-sha256:" + hmac.new(b"", "sk-\u00e9".encode(), hashlib.sha256).hexdigest()
    for pepper in (b"", b"p", bytes(range(63)), bytes(range(64)), bytes(range(65)), b"\xff" * 200):  # around the block size
        for key in ("", "sk-x", "sk-" + "k" * 100):
            assert hash_api_key(key, pepper) == "hmac-sha256:" + hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()
    assert hash_api_key("sk-x", b"p1") == hash_api_key("sk-x", b"p1")


def test_new_keys_are_unique_and_prefixed() -> None:
    keys = {new_api_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("sk-") and len(k) > 40 for k in keys)


def test_ops_wildcard_scope() -> None:
    ops = Principal(tenant="t", key_id="k", scopes=frozenset({"ops:*"}))
    assert ops.has_scope("ops:read") and ops.has_scope("ops:admin")
    assert not ops.has_scope("tenant:write")
    reader = Principal(tenant="t", key_id="k", scopes=frozenset({"tenant:read"}))
    assert reader.has_scope("tenant:read") and not reader.has_scope("ops:read")


def test_principal_carries_the_keys_own_priority_and_expiry() -> None:
    # What a key it mints inherits (router.key_bounds): the key's own values, not the tenant's.
    expires = datetime(2030, 1, 1, tzinfo=timezone.utc)
    tenant = TenantConfig(id="t", priority="high")
    own = principal_for(tenant, KeyConfig(id="k", hash=hash_api_key("sk-x"), priority="low", expires_at=expires))
    assert (own.priority, own.key_priority, own.expires_at) == ("low", "low", expires)
    inherited = principal_for(tenant, KeyConfig(id="k", hash=hash_api_key("sk-x")))
    assert (inherited.priority, inherited.key_priority, inherited.expires_at) == ("high", None, None)
