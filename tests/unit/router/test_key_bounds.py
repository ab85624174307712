from __future__ import annotations

from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from core.config import BudgetConfig, LimitsConfig
from core.errors import PermissionDenied
from core.principal import Principal
from router.key_bounds import bounded_by
from router.tenant_records import KeyCreate

LATER = datetime(2031, 1, 1, tzinfo=timezone.utc)


def spec(**fields: object) -> KeyCreate:
    return msgspec.convert(fields, KeyCreate)


def test_a_token_without_key_settings_bounds_by_its_tenant_and_its_exp() -> None:
    # As a JWT's principal: no key priority, limits or budgets of its own; its `exp` is its expiry.
    token = Principal(
        tenant="t", key_id="jwt:alice", scopes=frozenset({"tenant:write"}), priority="high",
        expires_at=LATER, tenant_limits=LimitsConfig(tpm=50),
    )
    child = bounded_by(token, spec())
    assert (child.priority, child.limits, child.budgets, child.expires_at) == (None, None, [], LATER)
    assert bounded_by(token, spec(limits={"rpm": 10**6, "tpm": 50})).limits == LimitsConfig(rpm=10**6, tpm=50)
    with pytest.raises(PermissionDenied) as refused:
        bounded_by(token, spec(expires_at=(LATER + timedelta(seconds=1)).isoformat()))
    assert refused.value.param == "expires_at"
    # A timestamp without a zone is UTC, as the stores take it.
    assert bounded_by(token, spec(expires_at="2030-12-31T23:59:59")).expires_at == datetime(2030, 12, 31, 23, 59, 59)


def test_a_soft_budget_does_not_replace_a_hard_one() -> None:
    hard = BudgetConfig(kind="tokens", period="daily", limit=100)
    parent = Principal(tenant="t", key_id="k", scopes=frozenset({"tenant:write"}), key_budgets=(hard,))
    soft = {"kind": "tokens", "period": "daily", "limit": 10**6, "hard": False}
    assert bounded_by(parent, spec(budgets=[soft])).budgets == [msgspec.convert(soft, BudgetConfig), hard]
    with pytest.raises(PermissionDenied) as refused:
        bounded_by(parent, spec(budgets=[soft, {"kind": "tokens", "period": "daily", "limit": 101}]))
    assert refused.value.param == "budgets[1].limit"


def test_the_smaller_of_key_and_tenant_limit_bounds() -> None:
    parent = Principal(
        tenant="t", key_id="k", scopes=frozenset({"tenant:write"}),
        tenant_limits=LimitsConfig(rpm=5, tpm=100), key_limits=LimitsConfig(rpm=50, tpm=10),
    )
    assert bounded_by(parent, spec(limits={"rpm": 5, "tpm": 10})).limits == LimitsConfig(rpm=5, tpm=10)
    for name, value in (("rpm", 6), ("tpm", 11)):
        with pytest.raises(PermissionDenied) as refused:
            bounded_by(parent, spec(limits={name: value}))
        assert refused.value.param == f"limits.{name}"


def test_priority_at_or_below_the_makers() -> None:
    parent = Principal(tenant="t", key_id="k", scopes=frozenset({"tenant:write"}), priority="high", key_priority="high")
    assert [bounded_by(parent, spec(priority=p)).priority for p in ("high", "standard", "low")] == ["high", "standard", "low"]
    assert bounded_by(parent, spec()).priority == "high"
    with pytest.raises(PermissionDenied):
        bounded_by(parent, spec(priority="critical"))
