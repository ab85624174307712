"""Budget alerts on the in-process store: each threshold once, reads only near a threshold, refusals count as spent."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, cast

import msgspec
import pytest

from budgets.accounting import Accountant, Reservation
from budgets.store_memory import MemoryCounterStore
from core.config import AlertsConfig, KeyConfig, Price, TenantConfig
from core.errors import InsufficientQuota
from core.principal import Principal, principal_for
from router.auth import hash_api_key
from router.budget_alerts import BudgetAlerts
from router.context import RequestContext
from router.metrics import Metrics
from router.tenant_records import AuditEntry
from router.tenants_file import FileTenantStore
from serving.base import Usage

KEY = "sk-unit-budget-alerts-0123456789"
FREE = Price()
_ids = itertools.count()


class CountingStore(MemoryCounterStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def budget_state(self, key: str) -> tuple[int, int]:
        self.reads += 1
        return await super().budget_state(key)


class Setup:
    def __init__(self, store: CountingStore | None = None, metrics: Metrics | None = None) -> None:
        self.store = store if store is not None else CountingStore()
        self.accountant = Accountant(self.store)
        self.tenants = FileTenantStore([])
        self.metrics = metrics if metrics is not None else Metrics()
        self.alerts = BudgetAlerts(self.accountant, self.tenants, self.metrics, AlertsConfig, read_interval_s=0.01)

    async def request(
        self, who: Principal, prompt: int, completion: int, *, max_tokens: int | None = None, price: Price = FREE
    ) -> RequestContext:
        """Reserve, settle and hand the request to the hook, as billing does."""
        ctx = RequestContext(f"req-{next(_ids)}", cast(Any, None), who, "chat", "/v1/chat/completions", "m", {})
        account = self.accountant.account(who)
        try:
            reservation = await self.accountant.reserve(ctx.request_id, account, prompt, max_tokens or completion, price)
        except InsufficientQuota as exc:
            ctx.status, ctx.error, ctx.refused = exc.status, exc.code, exc.refused  # as Pipeline.fail
            self.alerts(ctx)
            return ctx
        ctx.reservation = reservation
        ctx.usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
        ctx.attempted = True
        ctx.cost = await self.accountant.settle(reservation, ctx.usage, price)
        self.alerts(ctx)
        return ctx

    async def settled(self) -> None:
        tasks = self.alerts._tasks
        while tasks:
            await asyncio.gather(*list(tasks))

    async def events(self, tenant: str) -> list[dict[str, Any]]:
        await self.settled()
        entries: list[AuditEntry] = await self.tenants.list_audit(tenant, 1000)
        return [e.new or {} for e in reversed(entries) if e.action == "budget.threshold" and e.actor == "system"]

    def counted(self, tenant: str, threshold: int) -> float:
        value = self.metrics.registry.get_sample_value("sluicegate_budget_alerts_total", {"tenant": tenant, "threshold": str(threshold)})
        return value or 0.0


def principal(tenant: str, budgets: list[dict[str, Any]], key_budgets: list[dict[str, Any]] | None = None) -> Principal:
    config = msgspec.convert({"id": tenant, "budgets": budgets}, TenantConfig)
    key = msgspec.convert({"id": "k1", "hash": hash_api_key(KEY), "budgets": key_budgets or []}, KeyConfig)
    return principal_for(config, key)


def tokens(limit: int, **extra: Any) -> dict[str, Any]:
    return {"kind": "tokens", "period": "monthly", "limit": limit, **extra}


async def test_each_threshold_fires_once_as_usage_crosses_it() -> None:
    setup = Setup()
    who = principal("acme", [tokens(100, hard=False)])
    for _ in range(6):
        await setup.request(who, 2, 8)
    await setup.settled()
    assert setup.store.reads == 0, "read while clearly below the lowest threshold"
    assert await setup.events("acme") == []
    for _ in range(6):  # 120 tokens: 80, 90 and 100 % crossed
        await setup.request(who, 2, 8)
        await setup.settled()
    events = await setup.events("acme")
    assert [(e["threshold"], e["spent"], e["reason"]) for e in events] == [(80, 80, "spent"), (90, 90, "spent"), (100, 100, "spent")]
    first = events[0]
    assert first["type"] == "budget.threshold" and first["id"].startswith("evt_")
    assert (first["tenant"], first["scope"], first["key_id"]) == ("acme", "tenant", None)
    assert first["budget"] == {"kind": "tokens", "period": "monthly", "limit": 100, "unit": "tokens", "hard": False}
    assert first["period_key"].startswith("month:") and first["at"].endswith("+00:00")
    assert len({e["id"] for e in events}) == 3
    assert [setup.counted("acme", t) for t in (80, 90, 100)] == [1.0, 1.0, 1.0]
    reads = setup.store.reads
    for _ in range(5):
        await setup.request(who, 2, 8)
    assert len(await setup.events("acme")) == 3
    assert setup.store.reads == reads, "read again once every threshold was sent"


async def test_a_crossing_settled_on_another_replica_by_a_request_admitted_earlier_is_not_missed() -> None:
    store = CountingStore()
    a, b = Setup(store), Setup(store)
    who = principal("late", [tokens(100, hard=False)])
    for _ in range(5):
        await a.request(who, 2, 8)  # 50 spent
    account = a.accountant.account(who)
    early = await b.accountant.reserve("early", account, 0, 10, FREE)  # 60 spent or held
    later = await a.accountant.reserve("later", account, 0, 25, FREE)  # 85
    await a.accountant.settle(later, Usage(completion_tokens=25, total_tokens=25), FREE)
    a.alerts(context(who, later, 25))  # bound 110: read, 75 spent and 10 held: near 80 %
    await asyncio.sleep(0.05)
    await b.accountant.settle(early, Usage(completion_tokens=5, total_tokens=5), FREE)
    reads = store.reads
    b.alerts(context(who, early, 5))  # 80 spent, but its own bound (60 + 5) stays below 80 %
    await b.settled()
    assert store.reads == reads, "replica b read although its bound was below the threshold"
    for _ in range(100):  # replica a, still near the threshold, reads again and sends it
        if await a.events("late"):
            break
        await asyncio.sleep(0.01)
    assert [(e["threshold"], e["spent"]) for e in await a.events("late")] == [(80, 80)]


def context(who: Principal, reservation: Reservation, completion: int) -> RequestContext:
    ctx = RequestContext(reservation.request_id, cast(Any, None), who, "chat", "/v1/chat/completions", "m", {})
    ctx.reservation, ctx.usage = reservation, Usage(completion_tokens=completion, total_tokens=completion)
    return ctx


async def test_replicas_sharing_a_store_send_each_threshold_once() -> None:
    store = CountingStore()
    a, b = Setup(store), Setup(store)
    who = principal("shared", [tokens(100, hard=False)])
    for i in range(12):
        await (a if i % 2 else b).request(who, 2, 8)
        await a.settled()
        await b.settled()
    events = await a.events("shared") + await b.events("shared")
    assert sorted(e["threshold"] for e in events) == [80, 90, 100]


async def test_a_refusal_counts_as_the_budget_spent() -> None:
    setup = Setup()
    who = principal("hard", [tokens(100)])
    for _ in range(7):
        await setup.request(who, 2, 8)  # 70 spent
    refused = await setup.request(who, 2, 8, max_tokens=40)
    assert refused.error == "insufficient_quota" and refused.reservation is None
    events = await setup.events("hard")
    assert [(e["threshold"], e["spent"], e["reason"]) for e in events] == [(80, 70, "refused"), (90, 70, "refused"), (100, 70, "refused")]
    reads = setup.store.reads
    for _ in range(3):
        await setup.request(who, 2, 8, max_tokens=40)
    await setup.settled()
    assert setup.store.reads == reads and len(await setup.events("hard")) == 3


async def test_with_several_hard_budgets_a_refusal_counts_only_for_one_spent_or_held_in_full() -> None:
    setup = Setup()
    who = principal("two", [tokens(100), tokens(1000, period="daily")])
    for _ in range(9):
        await setup.request(who, 2, 8)  # 90 of 100, 90 of 1000
    account = setup.accountant.account(who)
    await setup.accountant.reserve("holder", account, 0, 10, FREE)  # the monthly budget is now fully held
    await setup.request(who, 2, 8)  # refused
    events = await setup.events("two")
    assert [(e["budget"]["limit"], e["threshold"], e["reason"]) for e in events] == [
        (100, 80, "spent"), (100, 90, "spent"), (100, 100, "refused"),
    ]  # fmt: skip


async def test_a_refusal_that_names_its_budget_counts_for_that_one_only() -> None:
    setup = Setup()
    who = principal("named", [tokens(100), tokens(1000, period="daily")])
    for _ in range(7):
        await setup.request(who, 2, 8)  # 70 of 100, 70 of 1000
    refused = await setup.request(who, 2, 8, max_tokens=40)  # 112 > 100: the monthly budget refuses
    assert refused.refused is not None and ":month:" in refused.refused
    events = await setup.events("named")
    assert [(e["budget"]["limit"], e["threshold"], e["reason"]) for e in events] == [
        (100, 80, "refused"), (100, 90, "refused"), (100, 100, "refused"),
    ]  # fmt: skip


async def test_key_and_money_budgets_name_their_scope_and_unit() -> None:
    setup = Setup()
    price = Price(input_per_mtok=1_000_000, output_per_mtok=1_000_000)  # 1 micro-USD a token
    money = {"kind": "money", "period": "daily", "limit": 100, "alert_at": [50]}
    who = principal("payer", [], key_budgets=[money])
    for _ in range(5):
        await setup.request(who, 2, 8, price=price)
    (event,) = await setup.events("payer")
    assert (event["scope"], event["key_id"], event["threshold"], event["spent"]) == ("key", "k1", 50, 50)
    assert event["budget"] == {"kind": "money", "period": "daily", "limit": 100, "unit": "micro_usd", "hard": True}
    assert event["period_key"].startswith("day:")
    audit = (await setup.tenants.list_audit("payer", 10))[0]
    assert audit.target == f"budget/key/k1/money/{event['period_key']}"
    assert KEY not in msgspec.json.encode(event).decode() and hash_api_key(KEY) not in msgspec.json.encode(event).decode()


async def test_no_alert_at_means_no_alerts_and_no_reads() -> None:
    setup = Setup()
    who = principal("quiet", [tokens(10, hard=False, alert_at=[])])
    for _ in range(3):
        await setup.request(who, 2, 8)
    assert await setup.events("quiet") == [] and setup.store.reads == 0


async def test_a_raised_limit_arms_the_thresholds_again() -> None:
    setup = Setup()
    for limit in (100, 200):
        who = principal("grows", [tokens(limit, hard=False, alert_at=[80])])
        while (await setup.store.budget_state(setup.accountant.account(who).plan.budgets[0].key))[0] < limit * 0.8:
            await setup.request(who, 2, 8)
        await setup.settled()
    assert [(e["budget"]["limit"], e["threshold"]) for e in await setup.events("grows")] == [(100, 80), (200, 80)]


def test_the_hook_never_raises() -> None:
    setup = Setup()
    broken = RequestContext("x", cast(Any, None), cast(Any, None), "chat", "/", "m", {})
    broken.reservation = cast(Any, "not a reservation")
    setup.alerts(broken)


async def test_close_lets_pending_work_finish_and_refuses_more() -> None:
    setup = Setup()
    who = principal("closing", [tokens(12, hard=False)])
    await setup.request(who, 2, 8)
    await setup.alerts.close(grace_s=2.0)
    assert [e["threshold"] for e in await setup.events("closing")] == [80]
    await setup.request(who, 2, 8)
    assert not setup.alerts._tasks


def test_the_read_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BudgetAlerts(Accountant(MemoryCounterStore()), FileTenantStore([]), Metrics(), AlertsConfig, read_interval_s=0)
