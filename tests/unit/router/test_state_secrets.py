"""Shared-state URLs may carry passwords: they can be secret references, resolved only when used."""

from __future__ import annotations

import msgspec
import pytest

from budgets.store_redis import RedisCounterStore
from core.config import Config, ConfigError
from router.state import open_counter_store

_PASSWORD = "planted-redis-password-7f3a"


def _config(redis_url: object) -> Config:
    return msgspec.convert({"state": {"counters": "redis", "redis_url": redis_url, "ledger": "off"}}, Config)


def test_redis_url_from_an_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_TEST_REDIS_URL", f"redis://:{_PASSWORD}@127.0.0.1:6379/0")
    config = _config({"env": "SLUICEGATE_TEST_REDIS_URL"})
    assert config.state.redis() == f"redis://:{_PASSWORD}@127.0.0.1:6379/0"
    # The document itself names the variable, never the URL.
    assert _PASSWORD.encode() not in msgspec.json.encode(config)
    assert isinstance(open_counter_store(config), RedisCounterStore)


def test_a_missing_reference_names_the_key_not_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLUICEGATE_TEST_REDIS_URL", raising=False)
    config = _config({"env": "SLUICEGATE_TEST_REDIS_URL"})
    with pytest.raises(ConfigError, match=r"state\.redis_url.*SLUICEGATE_TEST_REDIS_URL"):
        open_counter_store(config)


def test_a_plain_url_still_works() -> None:
    assert _config("redis://127.0.0.1:6379/0").state.redis() == "redis://127.0.0.1:6379/0"
