"""The canary decider: one replica at a time reads every replica's samples and decides.

Each tick the replica holding the lease (Redis ``SET NX PX``; in one process it
always holds it) reads the samples of each active canary's current step,
asks ``policies.canary.decide``, and writes every decision other than "hold"
as a new config version through the reloader: so it is validated, audited,
in the history, and applied on every replica by the same reload path. A
rollback also calls the alert webhook. Operators steer through ``operate``
(promote, pause, resume, abort), which writes versions the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

import msgspec
import redis.asyncio as redis
from redis.exceptions import RedisError

from core.config import CanaryConfig, ModelConfig
from core.config_version import ConfigVersion, VersionConflict
from core.errors import GatewayError, NotFound
from policies.canary import Decision, apply, decide
from policies.canary_samples import SampleStore, SamplesUnavailable, WindowStats
from policies.routing import Alias
from router.alerts import send_alert
from router.canaries import sample_key
from router.metrics import Metrics
from router.reload import Reloader

log = logging.getLogger("sluicegate.canary")
LEASE_KEY = "sg:canary:lease"
ACTIVE = ("shadow", "canary")


class CanaryNotFound(NotFound):
    code = "canary_not_found"


class CanaryConflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "canary_state_conflict"


class Lease:
    """Who decides. Without Redis this process always does."""

    def __init__(self, redis_url: str | None, ttl_s: float = 10.0) -> None:
        self._client = redis.Redis.from_url(redis_url, socket_timeout=2.0) if redis_url else None
        self._id = f"{os.getpid()}-{os.urandom(6).hex()}"
        self._ttl_ms = int(ttl_s * 1000)

    async def hold(self) -> bool:
        if self._client is None:
            return True
        try:
            if await self._client.set(LEASE_KEY, self._id, nx=True, px=self._ttl_ms):
                return True
            owner = await self._client.get(LEASE_KEY)
            if owner is not None and (owner.decode() if isinstance(owner, bytes) else owner) == self._id:
                await self._client.pexpire(LEASE_KEY, self._ttl_ms)
                return True
        except RedisError:
            return False
        return False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class CanaryController:
    def __init__(
        self, reloader: Reloader, samples: SampleStore, metrics: Metrics, lease: Lease, clock: Callable[[], float] = time.time
    ) -> None:
        self.reloader = reloader
        self.samples = samples
        self.metrics = metrics
        self.lease = lease
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        # Alert deliveries in flight (retries can keep one going for a while): awaited, briefly, on close.
        self._alerts: set[asyncio.Task[bool]] = set()
        # alias --> the last decision this replica made, "hold" included
        self.last: dict[str, Decision] = {}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._alerts:
            _, late = await asyncio.wait(self._alerts, timeout=5.0)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.lease.close()

    def _active(self) -> list[Alias]:
        return [a for a in self.reloader.current.router.aliases() if a.config.canary is not None and a.config.canary.state.phase in ACTIVE]

    async def _run(self) -> None:
        while True:
            active = self._active()
            # Several looks per interval, so a breach is acted on well within one.
            tick = min((a.config.canary.interval_s for a in active if a.config.canary), default=4.0) / 4
            await asyncio.sleep(min(max(tick, 0.05), 1.0))
            try:
                await self.tick()
            except Exception:
                log.exception("canary evaluation failed")

    async def tick(self) -> None:
        if not self._active() or not await self.lease.hold():
            return
        await self.samples.flush()
        for alias in self._active():
            canary = alias.config.canary
            assert canary is not None
            if canary.state.since == 0:
                # The canary's clock starts when a decider first sees it.
                await self._write(alias.name, lambda m: _started(m, self._clock()), "canary", f"canary {alias.name}: started")
                continue
            try:
                stats = await self.samples.read(sample_key(alias.name, canary))
            except SamplesUnavailable:
                continue  # no numbers: nothing decided
            decision = decide(canary, stats, self._clock(), self._healthy(alias))
            self.last[alias.name] = decision
            if decision.action != "hold":
                await self._decided(alias.name, decision)

    def _healthy(self, alias: Alias) -> bool:
        failed = self.reloader.current.failed
        return any(d.breaker.would_allow() and d.name not in failed for d in alias.candidate)

    async def _decided(self, alias: str, decision: Decision) -> None:
        now = self._clock()
        version = await self._write(
            alias,
            lambda m: apply(m, decision.action, now, decision.reason),
            "canary",
            f"canary {alias}: {decision.action}: {decision.reason}",
        )
        if version is None:
            return
        self.metrics.canary_decisions.labels(alias, decision.action).inc()
        log.warning("canary %s: %s (%s), config version %d", alias, decision.action, decision.reason, version.version)
        if decision.action == "rollback":
            event = {
                "event": "canary.rollback",
                "model": alias,
                "reason": decision.reason,
                "config_version": version.version,
                "numbers": decision.numbers,
            }
            task = asyncio.get_running_loop().create_task(send_alert(self.reloader.current.config.alerts, event))
            self._alerts.add(task)
            task.add_done_callback(self._alerts.discard)

    async def _write(self, alias: str, change: Callable[[ModelConfig], ModelConfig], actor: str, reason: str) -> ConfigVersion | None:
        snapshot = self.reloader.current
        live = snapshot.config.live()
        models = [change(m) if m.alias == alias else m for m in live.models]
        document = msgspec.structs.replace(live, models=models)
        try:
            return await self.reloader.commit(document, expected=snapshot.version, actor=actor, reason=reason)
        except VersionConflict:
            return None  # another writer was first: decide again on the next tick

    # --- operators ----------------------------------------------------------------

    async def operate(self, alias: str, action: str, actor: str, reason: str) -> ConfigVersion:
        """promote, pause, resume or abort a canary; 409 when its state does not allow it."""
        now = self._clock()
        why = reason or f"{action} by operator"
        for _ in range(5):
            try:
                apply(self._model(alias), action, now, why)
            except ValueError as exc:
                raise CanaryConflict(str(exc)) from None
            version = await self._write(alias, lambda m: apply(m, action, now, why), actor, f"canary {alias}: {action}: {why}")
            if version is not None:
                break
            # Another writer (often the decider) was first: read what it wrote, then try again.
            await asyncio.sleep(0.1)
        else:
            raise VersionConflict("The config kept changing while this was written; try again.")
        self.metrics.canary_decisions.labels(alias, action).inc()
        return version

    def _model(self, alias: str) -> ModelConfig:
        for model in self.reloader.current.config.models:
            if model.alias == alias and model.canary is not None:
                return model
        raise CanaryNotFound(f"No canary on model {alias!r}.")

    async def status(self) -> list[dict[str, object]]:
        out = []
        for model in self.reloader.current.config.models:
            canary = model.canary
            if canary is None:
                continue
            out.append(await self._status(model.alias, canary))
        return out

    async def _status(self, alias: str, canary: CanaryConfig) -> dict[str, object]:
        numbers: dict[str, object] | None = None
        if canary.state.phase in ACTIVE:
            try:
                stats: WindowStats = await self.samples.read(sample_key(alias, canary))
                numbers = dict(decide(canary, stats, self._clock(), True).numbers)
            except SamplesUnavailable:
                numbers = None
        last = self.last.get(alias)
        return {
            "model": alias,
            "candidate": canary.candidate,
            "phase": canary.state.phase,
            "step": canary.state.step,
            "steps": canary.steps,
            "weight": canary.weight(),
            "since": canary.state.since,
            "decision": canary.state.decision,
            "reason": canary.state.reason,
            "last_evaluation": {"action": last.action, "reason": last.reason} if last is not None else None,
            "numbers": numbers,
            "config_version": self.reloader.current.version,
        }


def _started(model: ModelConfig, now: float) -> ModelConfig:
    assert model.canary is not None
    state = msgspec.structs.replace(model.canary.state, since=now)
    return msgspec.structs.replace(model, canary=msgspec.structs.replace(model.canary, state=state))
