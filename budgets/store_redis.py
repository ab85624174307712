"""Counter store shared by many replicas through Redis or a Redis Cluster.

``admit.lua`` checks and reserves everything a request needs on one shard in
one EVALSHA; ``settle.lua`` releases and charges there in another. Scripts use
the server's TIME, so replicas with skewed clocks agree on windows and leases.

Keys are ``{<prefix>...}<type>:<key>`` (the types are listed in
``admit.lua``). On a single Redis every key shares the hash tag
``{<prefix>}`` and a request is one script call per phase, as it always was.

With ``sharded`` (a Redis Cluster) each tenant's counters get a hash tag of
their own, ``{<prefix>t:<tenant>}`` (see ``shard_of``), so tenants spread over
the cluster's shards and each script still touches one slot. Counters of other
scopes, shared across tenants, live under their own tags and are reserved by a
separate call after the tenant's, and undone there if that call refuses. Each
shard keeps its own reservation record (``res:<id>``); which shards a request
touched is kept in this process and, for a settle from another replica (a
batch resumed elsewhere), in a pointer ``{<prefix>id:<id>}`` that lives as long
as the records. Whatever a crash between calls leaves behind is a reservation
with a lease, released when the lease ends like any other.

A timed-out call may have run on the server; the client retries it safely
because a repeated admit of the same id reserves nothing more and a repeated
settle does nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from budgets.store import (
    RECORD_GRACE_MS,
    Admission,
    BudgetRule,
    Floors,
    LimitRule,
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
    redis_errors.ClusterError,
    redis_errors.TryAgainError,
    OSError,
    asyncio.TimeoutError,
)
_KIND_CODE = {"requests": "r", "tokens": "t", "concurrency": "c"}
# Prepared plans and the shards of live reservations kept in this process (caches: dropped when full).
_CACHE_LIMIT = 65_536

Client = aioredis.Redis | RedisCluster


def _lua(name: str) -> str:
    return files("budgets").joinpath("lua").joinpath(name).read_text(encoding="utf-8")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def shard_of(key: str) -> str | None:
    """The shard a counter key belongs to when keys are sharded.

    ``<name>:t:<tenant>[:...]`` and ``<name>:k:<tenant>:<key id>[:...]`` (the
    keys ``budgets.accounting`` builds) belong to ``t:<tenant>``, so a tenant's
    and its keys' counters stay together; another one-letter scope
    (``conc:d:<deployment>``) is a shard of its own, ``d:<deployment>``; any
    other key belongs to the shared shard (None).
    """
    parts = key.split(":", 3)
    if len(parts) >= 3 and len(parts[1]) == 1 and parts[2]:
        return ("t" if parts[1] == "k" else parts[1]) + ":" + parts[2]
    return None


@dataclass(slots=True, frozen=True)
class _Shard:
    """The part of a plan one script call reserves: the limits and budgets under one hash tag."""

    tag: str
    # (kind code, key, limit, window ms) of each limit
    limits: tuple[tuple[str, str, int, int], ...]
    # (position in the plan's budgets, rule) of each budget
    budgets: tuple[tuple[int, BudgetRule], ...]


def _shard(tag: str, limits: list[LimitRule], budgets: list[tuple[int, BudgetRule]]) -> _Shard:
    return _Shard(tag, tuple((_KIND_CODE[lim.kind], lim.key, lim.limit, lim.window_ms) for lim in limits), tuple(budgets))


class RedisCounterStore:
    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "sg:",
        client: Client | None = None,
        *,
        cluster: bool = False,
        socket_timeout_s: float = 0.5,
        connect_timeout_s: float = 0.5,
        max_connections: int = 128,
        pool_timeout_s: float = 5.0,
        retries: int = 1,
    ) -> None:
        """``client`` (if given) is used as is and left open by ``close``.

        Otherwise a client is built from ``url``: with ``cluster`` a Redis
        Cluster client (``url`` names any node; at most ``max_connections``
        sockets per node), else a bounded pool of at most ``max_connections``
        sockets, waiting ``pool_timeout_s`` for a free one, with ``retries``
        immediate retries; no call can hang past its timeouts. Keys are sharded
        by tenant when the client is a cluster client.
        """
        self._owns_client = client is None
        if client is None:
            if cluster:
                client = RedisCluster.from_url(
                    url,
                    max_connections=max_connections,
                    socket_timeout=socket_timeout_s,
                    socket_connect_timeout=connect_timeout_s,
                )
            else:
                pool = aioredis.BlockingConnectionPool.from_url(
                    url,
                    max_connections=max_connections,
                    timeout=pool_timeout_s,
                    socket_timeout=socket_timeout_s,
                    socket_connect_timeout=connect_timeout_s,
                    retry=Retry(NoBackoff(), retries),
                )
                client = aioredis.Redis.from_pool(pool)
        self._redis: Client = client
        self._sharded = isinstance(client, RedisCluster)
        # The cluster client refuses a call beyond its sockets rather than waiting: calls wait here instead.
        self._gate = asyncio.Semaphore(max_connections) if self._sharded else None
        self._pool_timeout_s = pool_timeout_s
        self._prefix = prefix
        self._base = "{" + prefix + "}"
        self._admit_script = client.register_script(_lua("admit.lua"))
        self._settle_script = client.register_script(_lua("settle.lua"))
        self._claim_script = client.register_script(_lua("claim.lua"))
        # id of a plan --> (the plan, its shards in reservation order)
        self._plans: dict[int, tuple[Plan, tuple[_Shard, ...]]] = {}
        # request id --> tags of the shards its live reservation holds (sharded only)
        self._held: dict[str, tuple[str, ...]] = {}

    @property
    def key_prefix(self) -> str:
        """Every key of the shared shard starts with this string (each shard's with ``{<prefix>``)."""
        return self._base

    @property
    def sharded(self) -> bool:
        """Whether keys are spread over shards by tenant (a Redis Cluster)."""
        return self._sharded

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
        shards = self._shards(plan)
        if not shards:
            return Admission(allowed=True)
        head = (request_id, -1 if now_ms is None else now_ms, lease_ms, RECORD_GRACE_MS)
        states: list[int] = [0] * (3 * len(plan.budgets))
        if not self._sharded:
            reply = await self._call(self._admit_script, shards[0].tag, request_id, *_args(shards[0], head, tokens, money, floors))
            refusal = _read(reply, shards[0], states)
        else:
            refusal = await self._reserve_sharded(shards, head, tokens, money, floors, states)
        return refusal or _allowed(plan.budgets, states)

    async def _reserve_sharded(
        self,
        shards: tuple[_Shard, ...],
        head: tuple[str, int, int, int],
        tokens: int,
        money: int,
        floors: Floors | None,
        states: list[int],
    ) -> Admission | None:
        """Reserve shard after shard (tenants first); a refusal or failure undoes the shards already reserved."""
        request_id, lease_ms = head[0], head[2]
        tags = tuple(shard.tag for shard in shards)
        pointer = self._pointer_key(request_id)
        outcomes: tuple[Any, Any] = await asyncio.gather(
            self._call(self._admit_script, tags[0], request_id, *_args(shards[0], head, tokens, money, floors)),
            self._guard(self._redis.set(pointer, msgspec.json.encode(tags), px=lease_ms + RECORD_GRACE_MS)),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                await self._undo(request_id, tags[:1])
                raise outcome
        refusal = _read(outcomes[0], shards[0], states)
        for done, shard in enumerate(shards[1:], start=1):
            if refusal is not None:
                await self._undo(request_id, tags[:done])
                return refusal
            try:
                reply = await self._call(self._admit_script, shard.tag, request_id, *_args(shard, head, tokens, money, floors))
            except StoreUnavailable:
                await self._undo(request_id, tags[: done + 1])
                raise
            refusal = _read(reply, shard, states)
        if refusal is not None:
            await self._undo(request_id, tags[:-1])
            return refusal
        if len(self._held) >= _CACHE_LIMIT:
            self._held.clear()  # the pointers still say where each reservation is
        self._held[request_id] = tags
        return None

    async def settle(self, request_id: str, tokens: int = 0, money: int = 0) -> None:
        check_charge(tokens, money)
        # strings: Lua would round large integers through doubles
        args = (request_id, str(tokens), str(money), "0")
        if not self._sharded:
            await self._call(self._settle_script, self._base, *args)
            return
        pointer = self._pointer_key(request_id)
        tags = self._held.pop(request_id, None)
        if tags is None:
            raw = await self._guard(self._redis.get(pointer))
            if raw is None:
                return
            tags = tuple(msgspec.json.decode(raw, type=list[str]))
        outcomes = await asyncio.gather(
            *(self._call(self._settle_script, tag, *args) for tag in tags),
            self._guard(self._redis.delete(pointer)),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def release(self, request_id: str) -> None:
        await self.settle(request_id)

    async def budget_state(self, key: str) -> tuple[int, int]:
        spent, reserved = await self._guard(self._redis.hmget(self._tag(key) + "bs:" + key, ["spent", "reserved"]))
        return int(spent or 0), int(reserved or 0)

    async def claim_once(self, key: str, expire_at_ms: int | None) -> bool:
        if expire_at_ms is not None and expire_at_ms <= time.time_ns() // 1_000_000:
            return False
        token = uuid.uuid4().hex
        expiry = "-1" if expire_at_ms is None else str(expire_at_ms)
        won = await self._guard(self._claim_script(keys=[self._base + "cl:" + key], args=[token, expiry]))
        return int(won) == 1

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except _UNAVAILABLE:
            return False

    async def close(self) -> None:
        if self._owns_client:
            await self._redis.aclose()

    def _tag(self, key: str) -> str:
        """The hash tag of a counter key's shard."""
        if not self._sharded:
            return self._base
        shard = shard_of(key)
        return self._base if shard is None else "{" + self._prefix + shard + "}"

    def _pointer_key(self, request_id: str) -> str:
        return "{" + self._prefix + "id:" + request_id + "}"

    def _shards(self, plan: Plan) -> tuple[_Shard, ...]:
        """The plan's counters grouped by shard: tenants' first, shared ones last (worked out once per plan)."""
        known = self._plans.get(id(plan))
        if known is not None and known[0] is plan:
            return known[1]
        limits: dict[str, list[LimitRule]] = {}
        budgets: dict[str, list[tuple[int, BudgetRule]]] = {}
        for limit in plan.limits:
            limits.setdefault(self._tag(limit.key), []).append(limit)
        for index, budget in enumerate(plan.budgets):
            budgets.setdefault(self._tag(budget.key), []).append((index, budget))
        tenant = "{" + self._prefix + "t:"
        tags = sorted(set(limits) | set(budgets), key=lambda tag: (not tag.startswith(tenant), tag))
        shards = tuple(_shard(tag, limits.get(tag, []), budgets.get(tag, [])) for tag in tags)
        if len(self._plans) >= _CACHE_LIMIT:
            self._plans.clear()
        self._plans[id(plan)] = (plan, shards)
        return shards

    async def _undo(self, request_id: str, tags: tuple[str, ...]) -> None:
        """Withdraw a partial reservation; best effort, as a lease ends whatever this cannot reach."""
        await asyncio.gather(
            *(self._call(self._settle_script, tag, request_id, "0", "0", "1") for tag in tags),
            self._guard(self._redis.delete(self._pointer_key(request_id))),
            return_exceptions=True,
        )

    async def _call(self, script: AsyncScript, tag: str, request_id: str, *args: str | int) -> Any:
        return await self._guard(script(keys=[tag + "res:" + request_id], args=[tag, request_id, *args]))

    async def _guard(self, call: Any) -> Any:
        try:
            if self._gate is None:
                return await call
            try:
                async with asyncio.timeout(self._pool_timeout_s):
                    await self._gate.acquire()
            except TimeoutError:
                call.close()
                raise
            try:
                return await call
            finally:
                self._gate.release()
        except _UNAVAILABLE as exc:
            # The class name only: messages may carry connection details.
            raise StoreUnavailable(f"counter store unavailable ({type(exc).__name__})") from exc


def _args(shard: _Shard, head: tuple[str, int, int, int], tokens: int, money: int, floors: Floors | None) -> list[str | int]:
    """admit.lua's arguments after the tag and request id (see the script)."""
    args: list[str | int] = [head[1], head[2], head[3], len(shard.limits)]
    for code, key, limit, window in shard.limits:
        args += (code, key, limit, tokens if code == "t" else 1, window)
    args.append(len(shard.budgets))
    for _, budget in shard.budgets:
        expire_at = budget.expire_at_ms()
        tokens_unit = budget.unit == "tokens"
        floor = None if floors is None else floors[0 if tokens_unit else 1]
        args += (
            budget.key,
            str(budget.limit),
            str(tokens if tokens_unit else money),
            1 if budget.hard else 0,
            -1 if expire_at is None else expire_at,
            "-1" if floor is None else str(floor),
            "t" if tokens_unit else "m",
        )
    return args


def _read(reply: Any, shard: _Shard, states: list[int]) -> Admission | None:
    """The refusal in a script's reply, or None after copying its (spent, reserved, held) into ``states``."""
    if int(reply[0]) == 0:
        retry_after = int(reply[3])
        return Admission(
            allowed=False,
            reason=_text(reply[1]),
            key=_text(reply[2]),
            retry_after_ms=retry_after if retry_after >= 0 else None,
        )
    for n, (index, _) in enumerate(shard.budgets):
        states[3 * index : 3 * index + 3] = (int(reply[1 + 3 * n]), int(reply[2 + 3 * n]), int(reply[3 + 3 * n]))
    return None


def _allowed(budgets: tuple[BudgetRule, ...], states: list[int]) -> Admission:
    """Admission from the (spent, reserved, held) triples the scripts read after reserving."""
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
