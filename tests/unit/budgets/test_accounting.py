from __future__ import annotations

from datetime import datetime, timezone

import pytest

from budgets.accounting import Accountant, AccountingSettings, budget_key, period_key
from budgets.store_memory import MemoryCounterStore
from core.config import BudgetConfig, LimitsConfig, Price
from core.errors import InsufficientQuota, RateLimited
from core.principal import Principal
from serving.base import Usage

PRICE = Price(input_per_mtok=1_000_000, output_per_mtok=2_000_000)  # $1 / $2 per 1M tokens


def _principal(**kwargs: object) -> Principal:
    return Principal(tenant="acme", key_id="k1", **kwargs)  # type: ignore[arg-type]


def test_period_keys() -> None:
    now = datetime(2026, 12, 31, 23, 59, tzinfo=timezone.utc)
    assert period_key("daily", now) == ("day:2026-12-31", int(datetime(2027, 1, 1, tzinfo=timezone.utc).timestamp() * 1000))
    assert period_key("monthly", now) == ("month:2026-12", int(datetime(2027, 1, 1, tzinfo=timezone.utc).timestamp() * 1000))
    assert period_key("lifetime", now) == ("lifetime", None)
    assert budget_key("t:acme", BudgetConfig(kind="money", period="monthly", limit=1), now)[0] == "budget:t:acme:money:month:2026-12"


def test_accounting_is_skipped_without_limits_or_budgets() -> None:
    accountant = Accountant(MemoryCounterStore())

    def needs(principal: Principal) -> tuple[bool, bool]:
        account = accountant.account(principal)
        return account.accounted, account.estimate

    assert needs(_principal()) == (False, False)
    # RPM alone needs no prompt estimate; TPM and budgets do.
    assert needs(_principal(tenant_limits=LimitsConfig(rpm=5))) == (True, False)
    assert needs(_principal(tenant_limits=LimitsConfig(tpm=5))) == (True, True)
    assert needs(_principal(key_budgets=(BudgetConfig(kind="tokens", period="daily", limit=5),))) == (True, True)


async def test_rpm_refusal_is_a_429_with_retry_after() -> None:
    accountant = Accountant(MemoryCounterStore())
    principal = _principal(tenant_limits=LimitsConfig(rpm=2))
    for i in range(2):
        await accountant.reserve(f"r{i}", accountant.account(principal), 10, 5, PRICE)
    with pytest.raises(RateLimited) as info:
        await accountant.reserve("r3", accountant.account(principal), 10, 5, PRICE)
    assert info.value.status == 429 and 0 < info.value.retry_after <= 60


async def test_money_budget_charges_actual_cost_exactly() -> None:
    store = MemoryCounterStore()
    accountant = Accountant(store)
    # $0.001 = 1000 micro-USD
    principal = _principal(tenant_budgets=(BudgetConfig(kind="money", period="monthly", limit=1000),))
    reservation = await accountant.reserve("r1", accountant.account(principal), 100, 50, PRICE)
    assert reservation.allowance is None  # the client bounded the completion itself
    cost = await accountant.settle(reservation, Usage(prompt_tokens=100, completion_tokens=20, total_tokens=120), PRICE)
    assert cost == 100 * 1_000_000 + 20 * 2_000_000
    key = reservation.plan.budgets[0].key
    assert await store.budget_state(key) == (cost, 0)


async def test_budget_exhausted_is_insufficient_quota() -> None:
    accountant = Accountant(MemoryCounterStore())
    principal = _principal(key_budgets=(BudgetConfig(kind="tokens", period="daily", limit=100),))
    reservation = await accountant.reserve("r1", accountant.account(principal), 60, 30, PRICE)
    await accountant.settle(reservation, Usage(prompt_tokens=60, completion_tokens=30, total_tokens=90), PRICE)
    with pytest.raises(InsufficientQuota) as info:
        await accountant.reserve("r2", accountant.account(principal), 20, 30, PRICE)
    assert (info.value.status, info.value.code, info.value.type) == (429, "insufficient_quota", "insufficient_quota")


async def test_without_max_tokens_the_allowance_is_what_the_budget_has_left() -> None:
    accountant = Accountant(MemoryCounterStore(), AccountingSettings(default_completion_cap=1000))
    principal = _principal(tenant_budgets=(BudgetConfig(kind="tokens", period="lifetime", limit=150),))
    reservation = await accountant.reserve("r1", accountant.account(principal), 100, None, PRICE)
    assert reservation.allowance == 50
    money = _principal(tenant_budgets=(BudgetConfig(kind="money", period="lifetime", limit=200),))  # 200 micro-USD
    reservation = await accountant.reserve("r2", accountant.account(money), 100, None, PRICE)
    # 200e6 pico - 100 tokens * 1e6 = 100e6 left, at 2e6 per output token
    assert reservation.allowance == 50
