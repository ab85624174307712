from __future__ import annotations

from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from router.auth import KeyStore, hash_api_key, new_api_key
from router.config import Config
from router.errors import AuthenticationFailed


def _store(pepper: bytes = b"", **key: object) -> KeyStore:
    entry = {"id": "k1", "hash": hash_api_key("sk-good", pepper), **key}
    config = msgspec.convert({"tenants": [{"id": "acme", "keys": [entry]}]}, Config)
    return KeyStore(config, pepper)


def test_valid_key_gives_tenant() -> None:
    principal = _store().authenticate("Bearer sk-good")
    assert (principal.tenant, principal.key_id) == ("acme", "k1")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic sk-good", "sk-good", "Bearer sk-bad"])
def test_refused(header: str | None) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        _store().authenticate(header)
    assert "sk-good" not in info.value.message
    assert info.value.status == 401


def test_pepper_changes_the_hash() -> None:
    assert hash_api_key("sk-x", b"p1") != hash_api_key("sk-x", b"p2")
    assert _store(b"pepper").authenticate("Bearer sk-good").tenant == "acme"
    with pytest.raises(AuthenticationFailed):
        _store(b"other").authenticate("Bearer sk-bad")


def test_expired_and_disabled_keys() -> None:
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    with pytest.raises(AuthenticationFailed, match="expired"):
        _store(expires_at=past.isoformat()).authenticate("Bearer sk-good")
    with pytest.raises(AuthenticationFailed):
        _store(disabled=True).authenticate("Bearer sk-good")


def test_new_keys_are_unique_and_prefixed() -> None:
    keys = {new_api_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("sk-") and len(k) > 40 for k in keys)
