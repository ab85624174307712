"""Config --> the running parts: engines, router, key store, pipeline, metrics."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from budgets.accounting import Accountant
from budgets.tokens import preload_tokenizer
from core.config import Config, ConfigError, DeploymentConfig, TenantConfig
from core.errors import AuthenticationFailed
from core.principal import Principal
from policies.routing import Alias, Deployment, Router
from policies.tenant_policy import TenantPolicies
from router.auth import bearer_token, hash_api_key
from router.billing import Billing
from router.jwt_auth import (
    JtiDenylist,
    JwtAuthenticator,
    MemoryJtiDenylist,
    RedisJtiDenylist,
    looks_like_jwt,
)
from router.metrics import Metrics
from router.pipeline import Pipeline
from router.state import accounting_settings, open_counter_store, open_ledger
from router.tenants import TenantNotFound, TenantStore, open_tenant_store
from router.tracing import Tracing
from serving.base import Engine, EngineSpec, Timeouts
from serving.health import BreakerSettings, CircuitBreaker
from serving.registry import ProviderError, build_engine, parse_options
from serving.retry import RetryPolicy

log = logging.getLogger("sluicegate")
# How long a tenant looked up for a JWT is trusted before it is read again.
_JWT_TENANT_TTL_S = 5.0


def engine_spec(index: int, dep: DeploymentConfig) -> EngineSpec:
    """Resolve a deployment's secrets and options; errors name the key, never the value."""
    where = f"deployments[{index}]"
    try:
        api_key = dep.api_key.resolve() if dep.api_key is not None else None
    except ConfigError as exc:
        raise ConfigError(f"key `{where}.api_key`: {exc}") from None
    try:
        options = parse_options(dep.provider, dep.options)
    except ProviderError as exc:
        raise ConfigError(f"key `{where}.options`: {exc}") from None
    except ImportError as exc:
        raise ConfigError(f"key `{where}.provider`: {dep.provider} needs a package that is not installed ({exc.name})") from None
    t = dep.timeouts
    return EngineSpec(
        name=dep.name,
        provider=dep.provider,
        model=dep.model,
        base_url=dep.base_url,
        api_key=api_key,
        timeouts=Timeouts(connect_s=t.connect_s, read_s=t.read_s, total_s=t.total_s),
        max_connections=dep.max_connections,
        options=options,
    )


class Gateway:
    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        pepper = config.auth.key_pepper.resolve().encode() if config.auth.key_pepper is not None else b""
        self.pepper = pepper
        # Tenants and keys: the config file, or PostgreSQL shared by every replica.
        self.tenants: TenantStore = open_tenant_store(config, pepper)
        self.jwt = self._jwt(config)
        self._jwt_tenants: dict[str, tuple[float, TenantConfig | None]] = {}
        self.engines: dict[str, Engine] = {}
        deployments: dict[str, Deployment] = {}
        r = config.resilience
        breaker = BreakerSettings(
            consecutive_failures=r.breaker_consecutive_failures,
            error_rate=r.breaker_error_rate,
            window_s=r.breaker_window_s,
            min_requests=r.breaker_min_requests,
            open_s=r.breaker_open_s,
        )
        for i, dep in enumerate(config.deployments):
            engine = build_engine(engine_spec(i, dep))
            self.engines[dep.name] = engine
            deployments[dep.name] = Deployment(config=dep, engine=engine, breaker=CircuitBreaker(breaker))
        aliases = [
            Alias(config=m, tiers=[[deployments[d] for d in tier] for tier in m.tiers()]) for m in config.models
        ]
        self.deployments = deployments
        self.router = Router(aliases)
        retry = RetryPolicy(
            max_attempts=r.max_attempts,
            backoff_base_s=r.backoff_base_s,
            backoff_max_s=r.backoff_max_s,
            max_retry_after_s=r.max_retry_after_s,
        )
        # Limits, budgets and the ledger: embedded by default, Redis/PostgreSQL when configured.
        self.counters = open_counter_store(config)
        self.ledger = open_ledger(config)
        self.billing = Billing(Accountant(self.counters, accounting_settings(config)), self.ledger, self.metrics)
        self.billing.know(deployments)
        self.policies = TenantPolicies(config)
        self.tracing = Tracing(config.telemetry)
        self.pipeline = Pipeline(self.router, self.metrics, self.billing, self.policies, self.tracing, retry)
        self._health_task: asyncio.Task[None] | None = None
        self.metrics.track_engine_load(self.engine_load)
        self.started = False

    def _jwt(self, config: Config) -> JwtAuthenticator | None:
        if config.auth.jwt is None:
            return None
        redis_url = config.state.redis_url
        # Shared through Redis when there is one, so a revoked token is refused by every replica.
        self._denylist: JtiDenylist = RedisJtiDenylist(redis_url) if redis_url else MemoryJtiDenylist()
        return JwtAuthenticator(config.auth.jwt, self._jwt_tenant, self._denylist)

    async def _jwt_tenant(self, tenant_id: str) -> TenantConfig | None:
        """The tenant a token names, cached briefly: a token-bearing request must not cost a query."""
        now = time.monotonic()
        cached = self._jwt_tenants.get(tenant_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            tenant = await self.tenants.get_tenant(tenant_id)
        except TenantNotFound:
            found = None
        else:
            found = TenantConfig(
                id=tenant.id, name=tenant.name, disabled=tenant.disabled, priority=tenant.priority,
                weight=tenant.weight, limits=tenant.limits, budgets=list(tenant.budgets),
            )
        if len(self._jwt_tenants) > 10_000:
            self._jwt_tenants.clear()
        self._jwt_tenants[tenant_id] = (now + _JWT_TENANT_TTL_S, found)
        return found

    async def start(self) -> None:
        await self.tenants.start()
        if self.jwt is not None:
            await self.jwt.start()
        if self.ledger is not None:
            await self.ledger.start()
        await self.policies.preload()
        # The offline tokenizer takes a moment to load: not on a tenant's first request.
        await asyncio.to_thread(preload_tokenizer)
        await asyncio.gather(*(engine.start() for engine in self.engines.values()))
        # What start-up allocated (engines, models, tokenizers) lives as long as the
        # process: keep it out of every later garbage collection's work.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*self.config.server.gc_thresholds)
        interval = self.config.resilience.health_check_interval_s
        if interval > 0:
            self._health_task = asyncio.create_task(self._check_health(interval))
        self.started = True

    async def _check_health(self, interval: float) -> None:
        """Active checks: a deployment whose upstream is down is open-circuited.

        ``health()`` asks the upstream itself and ignores how requests fared, so a
        run of client errors (a 400 for a prompt too long) never opens a breaker here.
        """
        while True:
            await asyncio.sleep(interval)
            for name, healthy in (await self.deployment_health(wait_s=None)).items():
                if not healthy:
                    self.deployments[name].breaker.force_open()

    async def stop(self) -> None:
        self.started = False
        if self._health_task is not None:
            self._health_task.cancel()
        # Settlements first (their rows go to the ledger), then the ledger, which
        # spools its rows at once and drains within its budget: before anything
        # below can wait on a database.
        await self.billing.drain()
        if self.ledger is not None:
            await self.ledger.close()
        results = await asyncio.gather(*(e.close() for e in self.engines.values()), return_exceptions=True)
        for name, result in zip(self.engines, results):
            if isinstance(result, Exception):
                log.warning("deployment %s did not close cleanly: %s", name, type(result).__name__)
        await self.tenants.close()
        if self.jwt is not None:
            await self.jwt.close()
            if isinstance(self._denylist, RedisJtiDenylist):
                await self._denylist.close()
        await self.counters.close()
        self.tracing.shutdown()

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller's principal from ``Authorization: Bearer <key>``; only the keyed hash is looked up."""
        token = bearer_token(authorization)
        if self.jwt is not None and looks_like_jwt(token):
            return await self.jwt.authenticate(token)
        principal = await self.tenants.authenticate(hash_api_key(token, self.pepper))
        if principal is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return principal

    def engine_load(self) -> dict[str, tuple[int, int]]:
        out = {}
        for name, engine in self.engines.items():
            load = engine.load()
            out[name] = (load.running, load.waiting)
        return out

    async def readiness(self) -> dict[str, bool]:
        """Dependencies the gateway needs to serve; upstream health is reported, not required."""
        return {"started": self.started}

    async def deployment_health(self, wait_s: float | None = 0.5) -> dict[str, bool]:
        """Is each deployment's upstream up, by its engine's health probe.

        A probe still out after ``wait_s`` (None: no limit) counts as down, so that
        /readyz answers within a kubelet's default 1 s probe timeout whatever an
        upstream does.
        """
        names = list(self.engines)
        probes = (asyncio.wait_for(self.engines[n].health(), wait_s) for n in names)
        results = await asyncio.gather(*probes, return_exceptions=True)
        return {n: r is True for n, r in zip(names, results)}
