"""Config --> the running parts: engines, router, key store, pipeline, metrics."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

from budgets.accounting import Accountant
from budgets.ledger import BatchingLedger
from budgets.tokens import preload_tokenizer
from core.config import Config, TenantConfig
from core.config_version import document_hash
from core.errors import AuthenticationFailed
from core.principal import Principal
from policies.routing import Deployment, Router
from policies.tenant_policy import TenantPolicies
from router import access_log
from router.auth import bearer_token, hash_api_key
from router.batch_job import BatchServices
from router.batch_records import BatchStore
from router.batch_runner import BatchRunner
from router.billing import Billing
from router.budget_alerts import BudgetAlerts
from router.cache_step import ResponseCache, open_cache_store
from router.canaries import Canaries, open_sample_store
from router.canary_control import CanaryController, Lease
from router.config_resolve import resolve
from router.config_store import MemoryConfigStore
from router.files_store import FileStore
from router.guardrail_step import GuardrailStep
from router.jwt_auth import (
    JtiDenylist,
    JwtAuthenticator,
    MemoryJtiDenylist,
    RedisJtiDenylist,
    looks_like_jwt,
)
from router.metrics import Metrics
from router.pipeline import Pipeline
from router.plugin_services import GatewayServices
from router.plugins import PluginHost
from router.reload import Reloader
from router.responses_expiry import ResponseSweeper
from router.responses_records import ResponseStore
from router.responses_store import open_response_store
from router.semantic_cache import SemanticCache, open_vector_index
from router.snapshot import Snapshot, build
from router.state import accounting_settings, open_config_store, open_counter_store, open_ledger
from router.state_batches import open_batch_store, open_claims, open_file_store
from router.tenant_records import TenantNotFound, TenantStore
from router.tenants import open_tenant_store
from router.tenants_file import FileTenantStore
from router.tracing import Tracing
from serving.base import Engine
from serving.health import State

log = logging.getLogger("sluicegate")
# How long a tenant looked up for a JWT is trusted before it is read again.
_JWT_TENANT_TTL_S = 5.0


class Gateway:
    def __init__(
        self, config: Config, metrics: Metrics | None = None, *, source_path: str | None = None,
        clock: Callable[[], float] = time.time, role: str = "serve",
    ) -> None:  # fmt: skip
        # What this process is (serve, worker): plugins may run their workers in one role only.
        self.role = role
        # Start-time settings; what reloads lives in the snapshot (``self.snapshot.config``).
        self.base = config
        self.metrics = metrics if metrics is not None else Metrics()
        pepper = config.auth.key_pepper.resolve().encode() if config.auth.key_pepper is not None else b""
        self.pepper = pepper
        # Tenants and keys: the config file, or PostgreSQL shared by every replica.
        self.tenants: TenantStore = open_tenant_store(config, pepper)
        self.jwt = self._jwt(config)
        self._jwt_tenants: dict[str, tuple[float, TenantConfig | None]] = {}
        # Version 0: the file as read; the store's newest version replaces it at start.
        self.plugin_host = PluginHost(self._plugin_services, self.metrics)
        resolved = resolve(config)
        plugins = self.plugin_host.prepare(list(resolved.plugins), None)
        initial = build(resolved, 0, document_hash(config.live()), None, plugins)
        self.reloader = Reloader(config, open_config_store(config), self.metrics, initial.snapshot, source_path=source_path)
        self.reloader.plugins = self.plugin_host
        self.reloader.on_swap(self._swapped)
        if isinstance(self.tenants, FileTenantStore) and isinstance(self.reloader.store, MemoryConfigStore):
            tenants = self.tenants
            self.reloader.on_commit(lambda v: tenants.record_config(v.actor, v.version, v.hash, v.reason))
        # Limits, budgets and the ledger: embedded by default, Redis/PostgreSQL when configured.
        self.counters = open_counter_store(config)
        self.ledger = open_ledger(config)
        # Responses kept for the Responses API (`store`), beside the ledger, until they expire (by `clock`).
        self.clock = clock
        self.responses: ResponseStore = open_response_store(config, clock)
        self.responses_sweeper = ResponseSweeper(self.responses, self.metrics)
        self.billing = Billing(Accountant(self.counters, accounting_settings(config)), self.ledger, self.metrics)
        if config.server.access_log:
            self.billing.after_record.append(access_log.recorded)
            self.billing.after_answer.append(access_log.record)
        # Budget thresholds (alert_at): a signed webhook, an audit entry and a metric, once per period.
        self.budget_alerts = BudgetAlerts(self.billing.accountant, self.tenants, self.metrics, lambda: self.reloader.current.config.alerts)
        self.billing.after_answer.append(self.budget_alerts)
        self.tracing = Tracing(config.telemetry)
        # Canaries: samples shared by every replica through Redis when there is one.
        samples = open_sample_store(config.state.redis())
        self.canaries = Canaries(samples, self.billing, self.metrics)
        self.canary_control = CanaryController(self.reloader, samples, self.metrics, Lease(config.state.redis()))
        self.pipeline = Pipeline(self.metrics, self.billing, self.tracing, self.canaries)
        # The response cache: memory by default (empty until an alias caches), Redis per `state.cache`.
        fast = self.metrics.fast  # one process: lock-free counters (router.metrics_fast)
        semantic = SemanticCache(open_vector_index(config), self.metrics.registry, config.state.cache.index_sweep_s, fast_metrics=fast)
        cache = ResponseCache(open_cache_store(config), self.metrics.registry, semantic, fast_metrics=fast)
        self.response_cache = self.pipeline.cache = cache
        self.response_cache.follow(config, self.billing.after_record)
        self.reloader.on_swap(lambda snapshot, _: self.response_cache.follow(snapshot.config, self.billing.after_record))
        # Guardrails: built per tenant and alias on first use; a detector pool and a moderation session, made when needed.
        self.guardrails = self.pipeline.guardrails = GuardrailStep(self.metrics.registry, self.tenants)
        # Files and batches (/v1/files, /v1/batches): a local directory by default; batches run in the background.
        self.files: FileStore = open_file_store(config)
        self.batches: BatchStore = open_batch_store(config)
        self.batch_runner = BatchRunner(BatchServices(
            self.pipeline, lambda: self.reloader.current, self.tenants, self.files, self.batches, open_claims(config, self.batches),
            config.batches,
        ))  # fmt: skip
        self._health_task: asyncio.Task[None] | None = None
        self.metrics.track_engine_load(self.engine_load)
        self.metrics.track_breakers(lambda: {name: d.breaker.state is State.OPEN for name, d in self.deployments.items()})
        self.metrics.track_queues(lambda: self.router.aliases())
        if isinstance(self.ledger, BatchingLedger):
            self.metrics.track_ledger(self.ledger.backlog)
        self.started = False

    def _plugin_services(self, plugin: str) -> GatewayServices:
        return GatewayServices(
            plugin, self.base.state, self.authenticate, self.tenants, lambda: self.pipeline, lambda: self.reloader.current, self.role
        )

    @property
    def snapshot(self) -> Snapshot:
        """What a request runs on: read once per request, kept to its end."""
        return self.reloader.current

    @property
    def config(self) -> Config:
        return self.reloader.current.config

    @property
    def router(self) -> Router:
        return self.reloader.current.router

    @property
    def deployments(self) -> dict[str, Deployment]:
        return self.reloader.current.deployments

    @property
    def engines(self) -> dict[str, Engine]:
        return self.reloader.current.engines

    @property
    def policies(self) -> TenantPolicies:
        return self.reloader.current.policies

    def _swapped(self, snapshot: Snapshot, previous: Snapshot | None) -> None:
        self.metrics.watch_queues(snapshot.router.aliases())
        for model in snapshot.config.models:
            self.metrics.canary_weight.labels(model.alias).set(model.canary.weight() if model.canary is not None else 0.0)
        if isinstance(self.tenants, FileTenantStore):
            self.tenants.reload(snapshot.config.tenants)
        self._jwt_tenants.clear()

    def _jwt(self, config: Config) -> JwtAuthenticator | None:
        if config.auth.jwt is None:
            return None
        redis_url = config.state.redis()
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
        await self.responses.start()
        if self.base.state.responses_retention_days:
            self.responses_sweeper.start()
        await self.policies.preload()
        # The offline tokenizer takes a moment to load: not on a tenant's first request.
        await asyncio.to_thread(preload_tokenizer)
        await self.plugin_host.start(self.snapshot.plugins)
        await asyncio.gather(*(engine.start() for engine in self.engines.values()))
        await self.reloader.start()
        await self.canaries.samples.start()
        await self.canary_control.start()
        await self.files.start()
        await self.batches.start()
        await self.batch_runner.start()
        # What start-up allocated (engines, models, tokenizers) lives as long as the
        # process: keep it out of every later garbage collection's work.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*self.base.server.gc_thresholds)
        self._health_task = asyncio.create_task(self._check_health())
        self.metrics.start(self.base.server.loop_lag_interval_s)
        self.started = True

    async def _check_health(self) -> None:
        """Active checks: a deployment whose upstream is down is open-circuited.

        ``health()`` asks the upstream itself and ignores how requests fared, so a
        run of client errors (a 400 for a prompt too long) never opens a breaker here.
        """
        while True:
            # Read each round: the interval reloads with the config (0: checks off).
            interval = self.config.resilience.health_check_interval_s
            await asyncio.sleep(interval or 1.0)
            if interval <= 0:
                continue
            deployments = self.deployments
            for name, healthy in (await self.deployment_health(wait_s=None)).items():
                if not healthy and name in deployments:
                    deployments[name].breaker.force_open()

    async def stop(self) -> None:
        self.started = False
        self.metrics.close()
        if self._health_task is not None:
            self._health_task.cancel()
        # Settlements first (their rows go to the ledger), then the ledger, which
        # spools its rows at once and drains within its budget: before anything
        # below can wait on a database.
        await self.canary_control.close()
        # Batch requests in flight finish (their rows and results kept) before billing drains.
        await self.batch_runner.close(grace_s=min(5.0, self.base.server.grace_period_s / 4))
        await self.batches.close()
        await self.files.close()
        await self.reloader.close()
        await self.canaries.close()
        await self.snapshot.plugins.drain()
        await self.billing.drain()
        await self.response_cache.close()
        await self.budget_alerts.close(grace_s=min(5.0, self.base.server.grace_period_s / 4))
        await self.guardrails.close(grace_s=min(5.0, self.base.server.grace_period_s / 4))
        if self.ledger is not None:
            await self.ledger.close()
        await self.responses_sweeper.close()
        await self.responses.close()
        results = await asyncio.gather(*(e.close() for e in self.engines.values()), return_exceptions=True)
        for name, result in zip(self.engines, results):
            if isinstance(result, Exception):
                log.warning("deployment %s did not close cleanly: %s", name, type(result).__name__)
        await self.plugin_host.close()
        await self.tenants.close()
        if self.jwt is not None:
            await self.jwt.close()
            if isinstance(self._denylist, RedisJtiDenylist):
                await self._denylist.close()
        await self.counters.close()
        self.tracing.shutdown()
        self.metrics.flush()  # several workers: what was recorded since metrics.close, into the shared files

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
