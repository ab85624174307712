"""Budget alerts: each ``alert_at`` percentage of a budget, once per threshold and period, on every replica.

Called after each settled request is answered (``Billing.after_answer``).
The hot path reads nothing: the reservation's ``remaining`` says how much of
each budget was spent or held when the request was admitted, and with this
request's own usage added that bounds what can have been spent since. Only
a budget whose bound reaches its lowest threshold not yet alerted is read
from the counter store (``budget_state``), by one task per budget at most, at
most once per ``read_interval_s``; a read asked for meanwhile runs when the
interval ends, so none is lost. A bound taken at admission can miss what
requests admitted later and settled sooner spent, so a budget whose read
finds spent plus held within reach of a threshold stays "near": it is read
again each interval until the threshold is reached or the holds are gone.

A threshold that ``spent`` has reached is claimed in the counter store
(``claim_once``, keyed by budget key, limit and threshold, expiring with the
budget counter): the budget key names its period, so a new period (or a new
limit) has new claims, and of all replicas only the one that wins the claim
sends the alert. The claim comes before the delivery: an alert whose webhook
never answers is logged, not sent again by another replica.

A request refused for its budget (``insufficient_quota``, before any attempt)
counts as 100 % used for the budget the refusal names (``GatewayError.refused``);
a refusal that names none (a store that does not say) counts for the only
hard budget, or when there are several, for each that is fully spent or held
at the read.

Each alert: a signed webhook (``router.alerts``, with retries), an audit
entry (actor ``system``, action ``budget.threshold``), the counter
``sluicegate_budget_alerts_total{tenant, threshold}`` and a log line. Money is
reported in micro-USD (``budget.unit``), rounded down.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from budgets.accounting import PICO_PER_MICRO, Accountant
from budgets.store import BudgetRule, StoreUnavailable
from core.config import AlertsConfig, BudgetConfig
from core.errors import GatewayError, InsufficientQuota
from core.principal import Principal
from router.alerts import send_alert
from router.metrics import Metrics
from router.tenant_records import TenantStore

if TYPE_CHECKING:
    from budgets.accounting import Reservation
    from router.context import RequestContext

log = logging.getLogger("sluicegate.budget_alerts")

READ_INTERVAL_S = 0.5
EVENT_TYPE = "budget.threshold"
_REFUSED = InsufficientQuota.code
# How a refusal concerns a budget: not at all, as the account's only hard budget, or as one of several.
_NONE, _ALONE, _AMONG = 0, 1, 2
# Watches kept before those of ended periods (or with every threshold sent) are dropped.
_MAX_WATCHES = 10_000


@dataclass(slots=True, eq=False)
class _Watch:
    """One budget of one period, as this replica knows it."""

    rule: BudgetRule
    config: BudgetConfig
    tenant: str
    key_id: str | None  # None: the tenant's budget
    period_key: str
    # Thresholds not yet claimed here (by this replica or, as the claim said, another), ascending.
    pending: list[int]
    near: bool = False
    refused: int = _NONE
    again: bool = False
    read_after: float = 0.0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def claim_key(rule: BudgetRule, threshold: int) -> str:
    return f"alert:{rule.key}:{rule.limit}:{threshold}"


class BudgetAlerts:
    def __init__(
        self, accountant: Accountant, tenants: TenantStore, metrics: Metrics, alerts: Callable[[], AlertsConfig], *,
        clock: Callable[[], float] = time.time, read_interval_s: float = READ_INTERVAL_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:  # fmt: skip
        """``alerts`` gives the current alert settings (they reload); ``clock`` the wall time of events;
        ``sleep`` waits between webhook tries."""
        if read_interval_s <= 0:
            raise ValueError("read_interval_s must be positive")
        self._accountant = accountant
        self._store = accountant.store
        self._tenants = tenants
        self._alerts = alerts
        self._clock = clock
        self._interval = read_interval_s
        self._sleep = sleep
        self.sent = Counter(
            "sluicegate_budget_alerts_total", "Budget thresholds reached (one alert per threshold and period), by tenant and percent.",
            ("tenant", "threshold"), registry=metrics.registry,
        )  # fmt: skip
        self._watches: dict[str, _Watch] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    def __call__(self, ctx: RequestContext) -> None:
        """The ``after_answer`` hook: never raises, never waits."""
        try:
            reservation = ctx.reservation
            if reservation is None:
                if ctx.error == _REFUSED and not ctx.attempted:
                    self._refused(ctx.principal, ctx.wall_started, ctx.refused)
            elif reservation.plan.budgets:
                self._settled(ctx, reservation)
        except Exception:
            log.exception("budget alert check failed")

    def _settled(self, ctx: RequestContext, reservation: Reservation) -> None:
        account = self._accountant.account(ctx.principal, ctx.wall_started)
        rules = reservation.plan.budgets
        if len(rules) != len(account.budgets):
            return  # not this principal's plan (never expected): nothing to compare against
        remaining = reservation.remaining
        usage = ctx.usage
        tokens = usage.prompt_tokens + usage.completion_tokens if usage is not None else 0
        for i, rule in enumerate(rules):
            scope, config = account.budgets[i]
            watch = self._watch(rule, config, ctx.principal, scope)
            if not watch.pending:
                continue
            if watch.near or not remaining:
                self._read(watch)
                continue
            # Spent at most: what was spent or held at admission, plus this request's own usage.
            bound = rule.limit - remaining[i] + (tokens if rule.unit == "tokens" else ctx.cost)
            if bound * 100 >= watch.pending[0] * rule.limit:
                self._read(watch)

    def _refused(self, principal: Principal, now_s: float, key: str | None) -> None:
        """``key``: the budget the store refused for (the refusal names it); else each hard budget may be it."""
        account = self._accountant.account(principal, now_s)
        hard = [i for i, rule in enumerate(account.plan.budgets) if rule.hard]
        named = [i for i in hard if account.plan.budgets[i].key == key]
        for i in named or hard:
            scope, config = account.budgets[i]
            watch = self._watch(account.plan.budgets[i], config, principal, scope)
            if watch.pending:
                watch.refused = _ALONE if named or len(hard) == 1 else _AMONG
                self._read(watch)

    def _watch(self, rule: BudgetRule, config: BudgetConfig, principal: Principal, scope: str) -> _Watch:
        watch = self._watches.get(rule.key)
        if (
            watch is not None
            and (watch.rule is rule or watch.rule == rule)
            and (watch.config is config or watch.config.alert_at == config.alert_at)
        ):
            return watch
        if len(self._watches) >= _MAX_WATCHES:
            self._prune()
        # A changed limit or list of thresholds starts over: claims already taken still answer False.
        period_key = rule.key.removeprefix(f"budget:{scope}:{config.kind}:")
        key_id = principal.key_id if scope.startswith("k:") else None
        watch = _Watch(rule, config, principal.tenant, key_id, period_key, sorted(set(config.alert_at)))
        self._watches[rule.key] = watch
        return watch

    def _prune(self) -> None:
        now_ms = self._clock() * 1000
        for key, watch in list(self._watches.items()):
            ended = watch.rule.period_end_ms is not None and watch.rule.period_end_ms <= now_ms
            if watch.task is None and (ended or not watch.pending):
                del self._watches[key]
        if len(self._watches) >= _MAX_WATCHES:
            self._watches = {key: watch for key, watch in self._watches.items() if watch.task is not None}

    # --- reading and claiming ---------------------------------------------------

    def _read(self, watch: _Watch) -> None:
        if watch.task is not None:
            watch.again = True  # the running task reads once more when its interval ends
        elif not self._closing:
            watch.task = self._spawn(self._reading(watch))

    async def _reading(self, watch: _Watch) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                delay = watch.read_after - loop.time()
                if delay > 0 and not self._closing:
                    await asyncio.sleep(delay)
                watch.again = False
                watch.read_after = loop.time() + self._interval
                if not await self._check(watch) or self._closing:
                    return
                if not watch.pending or not (watch.again or watch.near):
                    return
        finally:
            watch.task = None

    async def _check(self, watch: _Watch) -> bool:
        """Read the budget and fire every threshold reached; False when the store could not answer."""
        rule = watch.rule
        try:
            spent, reserved = await self._store.budget_state(rule.key)
            refused, watch.refused = watch.refused, _NONE
            full = refused == _ALONE or (refused == _AMONG and spent + reserved >= rule.limit)
            for threshold in list(watch.pending):
                reached = spent * 100 >= threshold * rule.limit
                if not (reached or full):
                    continue
                won = await self._store.claim_once(claim_key(rule, threshold), rule.expire_at_ms())
                watch.pending.remove(threshold)
                if won:
                    self._fire(watch, threshold, spent, "spent" if reached else "refused")
        except StoreUnavailable:
            log.warning("budget alert check skipped: counter store unavailable", extra={"tenant": watch.tenant})
            return False
        except Exception:
            log.exception("budget alert check failed", extra={"tenant": watch.tenant})
            return False
        watch.near = bool(watch.pending) and (spent + reserved) * 100 >= watch.pending[0] * rule.limit
        return True

    # --- one alert ----------------------------------------------------------------

    def _fire(self, watch: _Watch, threshold: int, spent: int, reason: str) -> None:
        config = watch.config
        money = config.kind == "money"
        scope = "key" if watch.key_id is not None else "tenant"
        event: dict[str, Any] = {
            "type": EVENT_TYPE,
            # The same for a threshold wherever and however often it is sent: receivers can de-duplicate.
            "id": "evt_" + hashlib.sha256(claim_key(watch.rule, threshold).encode()).hexdigest()[:32],
            "tenant": watch.tenant,
            "scope": scope,
            "key_id": watch.key_id,
            "budget": {
                "kind": config.kind, "period": config.period, "limit": config.limit,
                "unit": "micro_usd" if money else "tokens", "hard": config.hard,
            },
            "threshold": threshold,
            "spent": spent // PICO_PER_MICRO if money else spent,
            "reason": reason,
            "period_key": watch.period_key,
            "at": datetime.fromtimestamp(self._clock(), UTC).isoformat(),
        }  # fmt: skip
        self.sent.labels(watch.tenant, str(threshold)).inc()
        fields = {k: event[k] for k in ("id", "tenant", "scope", "key_id", "threshold", "spent", "reason", "period_key")}
        fields |= {"budget_kind": config.kind, "budget_limit": config.limit}
        log.warning("budget threshold %d%% reached by tenant %s (%s budget)", threshold, watch.tenant, scope, extra=fields)
        owner = f"key/{watch.key_id}" if watch.key_id is not None else "tenant"
        self._spawn(self._deliver(event, f"budget/{owner}/{config.kind}/{watch.period_key}"))

    async def _deliver(self, event: dict[str, Any], target: str) -> None:
        try:
            await self._tenants.record_event("system", EVENT_TYPE, event["tenant"], target, event)
        except GatewayError as exc:  # the webhook still goes out
            log.warning("budget alert %s: audit entry not written (%s)", event["id"], type(exc).__name__)
        await send_alert(self._alerts(), event, sleep=self._sleep)

    # --- tasks ----------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self, grace_s: float = 5.0) -> None:
        """Finish pending reads (once each, no more waiting) and deliveries within ``grace_s``; cancel the rest."""
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        # A read that finishes may start a delivery: wait for those too.
        while self._tasks and loop.time() < deadline:
            await asyncio.wait(list(self._tasks), timeout=deadline - loop.time())
        late = list(self._tasks)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        if late:
            log.warning("%d budget alert tasks cancelled at shutdown (deliveries may be lost)", len(late))
