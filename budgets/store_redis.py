"""Counter store shared by many replicas through Redis: one EVALSHA per phase.

``admit.lua`` checks and reserves everything a request needs in one script;
``settle.lua`` releases and charges in another. Scripts use the server's TIME,
so replicas with skewed clocks agree on windows and leases.

Keys are ``{<prefix>}<type>:<key>``: the prefix is the hash tag, so all keys of
one store live in a single cluster slot and every script stays single-slot
(cluster-safe without knowing which tenants a request touches). Types:
``r:<window>:`` / ``t:<window>:`` request and token windows, ``c:`` concurrency
leases (ZSET id -> expiry), ``bs:`` budget state (HASH spent, reserved),
``bl:`` budget leases (ZSET id -> expiry), ``ba:`` budget holds (HASH id ->
amount), ``res:<request id>`` the reservation record settle works from,
``cl:`` claims made once (``claim_once``, ``claim.lua``).

A timed-out call may have run on the server; the client retries it safely
because a repeated admit of the same id reserves nothing more and a repeated
settle does nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from importlib.resources import files
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from budgets.store import (
    RECORD_GRACE_MS,
    Admission,
    BudgetRule,
    Floors,
    Plan,
    StoreUnavailable,
    budget_view,
    check_charge,
    check_claim,
)

# Errors that mean "the store cannot serve this now", as opposed to a bug.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    OSError,
    asyncio.TimeoutError,
)


def _script(name: str) -> str:
    """A script with the shared lease-reclaiming function in front of it."""
    lua = files("budgets").joinpath("lua")
    return lua.joinpath("reclaim.lua").read_text(encoding="utf-8") + "\n" + lua.joinpath(name).read_text(encoding="utf-8")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisCounterStore:
    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "sg:",
        client: aioredis.Redis | None = None,
        *,
        socket_timeout_s: float = 0.5,
        connect_timeout_s: float = 0.5,
        max_connections: int = 128,
        pool_timeout_s: float = 5.0,
        retries: int = 1,
    ) -> None:
        """``client`` (if given) is used as is and left open by ``close``.

        Otherwise a bounded pool is built from ``url``: at most
        ``max_connections`` sockets, waiting ``pool_timeout_s`` for a free one,
        and ``retries`` immediate retries; no call can hang past its timeouts.
        """
        self._owns_client = client is None
        if client is None:
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=pool_timeout_s,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=connect_timeout_s,
                retry=Retry(NoBackoff(), retries),
            )
            client = aioredis.Redis.from_pool(pool)
        self._redis = client
        self._base = "{" + prefix + "}"
        self._admit_script = client.register_script(_script("admit.lua"))
        self._settle_script = client.register_script(_script("settle.lua"))
        self._claim_script = client.register_script(files("budgets").joinpath("lua").joinpath("claim.lua").read_text(encoding="utf-8"))

    @property
    def key_prefix(self) -> str:
        """Every key this store writes starts with this string."""
        return self._base

    async def reserve(
        self,
        plan: Plan,
        request_id: str,
        tokens: int,
        money: int,
        lease_ms: int,
        floors: Floors | None = None,
        now_ms: int | None = None,
    ) -> Admission:
        check_claim(request_id, tokens, money, lease_ms, floors)
        payload = msgspec.json.encode(
            {
                "rid": request_id,
                "lease": lease_ms,
                "now": -1 if now_ms is None else now_ms,
                "grace": RECORD_GRACE_MS,
                "limits": [[lim.kind, lim.key, lim.limit, tokens if lim.kind == "tokens" else 1, lim.window_ms] for lim in plan.limits],
                "budgets": [_budget_args(budget, tokens, money, floors) for budget in plan.budgets],
            }
        )
        reply = await self._call(self._admit_script, self._record_key(request_id), self._base, payload)
        if int(reply[0]) == 0:
            retry_after = int(reply[3])
            return Admission(
                allowed=False,
                reason=_text(reply[1]),
                key=_text(reply[2]),
                retry_after_ms=retry_after if retry_after >= 0 else None,
            )
        return _allowed(plan.budgets, [int(value) for value in reply[1:]])

    async def settle(self, request_id: str, tokens: int = 0, money: int = 0) -> None:
        check_charge(tokens, money)
        # strings: Lua would round large integers through doubles
        payload = msgspec.json.encode({"t": str(tokens), "m": str(money)})
        await self._call(self._settle_script, self._record_key(request_id), self._base, request_id, payload)

    async def release(self, request_id: str) -> None:
        await self.settle(request_id)

    async def budget_state(self, key: str) -> tuple[int, int]:
        try:
            spent, reserved = await self._redis.hmget(self._base + "bs:" + key, ["spent", "reserved"])
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"counter store unavailable ({type(exc).__name__})") from exc
        return int(spent or 0), int(reserved or 0)

    async def claim_once(self, key: str, expire_at_ms: int | None) -> bool:
        if expire_at_ms is not None and expire_at_ms <= time.time_ns() // 1_000_000:
            return False
        token = uuid.uuid4().hex
        expiry = "-1" if expire_at_ms is None else str(expire_at_ms)
        try:
            won = await self._claim_script(keys=[self._base + "cl:" + key], args=[token, expiry])
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"counter store unavailable ({type(exc).__name__})") from exc
        return int(won) == 1

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except _UNAVAILABLE:
            return False

    async def close(self) -> None:
        if self._owns_client:
            await self._redis.aclose()

    def _record_key(self, request_id: str) -> str:
        return self._base + "res:" + request_id

    async def _call(self, script: AsyncScript, key: str, *args: str | bytes) -> Any:
        try:
            return await script(keys=[key], args=list(args))
        except _UNAVAILABLE as exc:
            # The class name only: messages may carry connection details.
            raise StoreUnavailable(f"counter store unavailable ({type(exc).__name__})") from exc


def _budget_args(budget: BudgetRule, tokens: int, money: int, floors: Floors | None) -> list[str | int]:
    expire_at = budget.expire_at_ms()
    tokens_unit = budget.unit == "tokens"
    floor = None if floors is None else floors[0 if tokens_unit else 1]
    return [
        budget.key,
        str(budget.limit),
        str(tokens if tokens_unit else money),
        1 if budget.hard else 0,
        -1 if expire_at is None else expire_at,
        "-1" if floor is None else str(floor),
        "t" if tokens_unit else "m",
    ]


def _allowed(budgets: tuple[BudgetRule, ...], states: list[int]) -> Admission:
    """Admission from the (spent, reserved, held) triples the script read after reserving."""
    soft_exceeded: list[str] = []
    remaining: list[int] = []
    held: list[int] = []
    for index, budget in enumerate(budgets):
        spent, reserved, holding = states[3 * index : 3 * index + 3]
        left, over = budget_view(budget, spent, reserved)
        remaining.append(left)
        held.append(holding)
        if over:
            soft_exceeded.append(budget.key)
    return Admission(allowed=True, remaining=tuple(remaining), held=tuple(held), soft_exceeded=tuple(soft_exceeded))
