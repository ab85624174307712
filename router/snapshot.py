"""A live config --> the frozen set of running parts one request uses from start to end.

A snapshot is built beside the one serving, reusing what did not change: a
deployment whose engine spec (provider, model, URL, resolved key, timeouts,
options) is the same keeps its engine (connection pools, in-process models),
breaker and latency history even when its price or privacy changed; an alias
whose queue settings are the same keeps its queue. The gateway then swaps one
reference. A request reads that reference once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.config import Config, ModelConfig
from policies.fair_queue import FairQueue
from policies.routing import Alias, Deployment, Router
from policies.tenant_policy import TenantPolicies
from router.config_resolve import Resolved
from router.guardrail_index import GuardrailIndex
from router.plugins import NO_PLUGINS, PluginSet
from serving.base import Engine, EngineSpec
from serving.health import BreakerSettings, CircuitBreaker
from serving.registry import PluginEngineOptions, build_engine
from serving.retry import RetryPolicy


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    version: int
    hash: str
    config: Config
    router: Router
    deployments: dict[str, Deployment]
    policies: TenantPolicies
    retry: RetryPolicy
    breaker: BreakerSettings
    specs: dict[str, EngineSpec]
    # Deployments whose engine failed to start: left out until a version builds them again.
    failed: frozenset[str] = frozenset()
    # The version as a response header value, encoded once.
    header: bytes = b""
    # The plugins this version enables, their hooks by step.
    plugins: PluginSet = NO_PLUGINS
    # Tenants' and aliases' guardrails and the engines built for them; None when none has any.
    guardrails: GuardrailIndex | None = None

    @property
    def engines(self) -> dict[str, Engine]:
        return {name: d.engine for name, d in self.deployments.items()}


@dataclass(slots=True)
class Built:
    snapshot: Snapshot
    # Engines made for this snapshot, to start before it serves.
    new: dict[str, Engine] = field(default_factory=dict)
    # Engines of the previous snapshot this one does not use, to close once idle.
    retired: list[Engine] = field(default_factory=list)


def build(resolved: Resolved, version: int, hash: str, previous: Snapshot | None, plugins: PluginSet = NO_PLUGINS) -> Built:
    config = resolved.config
    old = previous.deployments if previous is not None else {}
    same_breaker = previous is not None and previous.breaker == resolved.breaker
    deployments: dict[str, Deployment] = {}
    new: dict[str, Engine] = {}
    for dep in config.deployments:
        spec = resolved.specs[dep.name]
        before = old.get(dep.name)
        same_maker = not isinstance(spec.options, PluginEngineOptions) or (
            previous is not None
            and previous.plugins.engine_owners.get(spec.options.engine) is plugins.engine_owners.get(spec.options.engine)
        )
        if (
            before is not None
            and previous is not None
            and previous.specs.get(dep.name) == spec
            and dep.name not in previous.failed
            and same_maker
        ):
            breaker = before.breaker if same_breaker else CircuitBreaker(resolved.breaker)
            if before.config == dep and breaker is before.breaker:
                deployments[dep.name] = before
            else:
                deployments[dep.name] = Deployment(config=dep, engine=before.engine, breaker=breaker, latency=before.latency)
            continue
        engine = _plugin_engine(spec, plugins) if isinstance(spec.options, PluginEngineOptions) else build_engine(spec)
        new[dep.name] = engine
        deployments[dep.name] = Deployment(config=dep, engine=engine, breaker=CircuitBreaker(resolved.breaker))
    kept = {id(d.engine) for d in deployments.values()}
    retired = [d.engine for d in old.values() if id(d.engine) not in kept]
    old_aliases = {a.name: a for a in previous.router.aliases()} if previous is not None else {}
    aliases = [_alias(model, deployments, old_aliases.get(model.alias)) for model in config.models]
    snapshot = Snapshot(
        version=version,
        hash=hash,
        config=config,
        router=Router(aliases),
        deployments=deployments,
        policies=resolved.policies,
        retry=resolved.retry,
        breaker=resolved.breaker,
        specs=resolved.specs,
        header=str(version).encode(),
        plugins=plugins,
        guardrails=GuardrailIndex.of(config),
    )
    return Built(snapshot=snapshot, new=new, retired=retired)


def _plugin_engine(spec: EngineSpec, plugins: PluginSet) -> Engine:
    """A ``provider: plugin`` deployment's engine, made by the plugin that offers it (checked by ``resolve``)."""
    assert isinstance(spec.options, PluginEngineOptions)
    engine: Engine = plugins.engines[spec.options.engine](spec)
    return engine


def with_failed(snapshot: Snapshot, failed: set[str]) -> Snapshot:
    """The snapshot with the deployments whose engine could not start marked, and their breakers open."""
    for name in failed:
        snapshot.deployments[name].breaker.force_open()
    return Snapshot(**{**{f: getattr(snapshot, f) for f in Snapshot.__dataclass_fields__}, "failed": frozenset(failed)})


def _alias(model: ModelConfig, deployments: dict[str, Deployment], before: Alias | None) -> Alias:
    queue: FairQueue | None = None
    if before is not None and before.queue is not None and _queue_settings(before.config) == _queue_settings(model):
        queue = before.queue
    candidate = [deployments[name] for name in model.canary.candidate] if model.canary is not None else []
    return Alias(config=model, tiers=[[deployments[d] for d in tier] for tier in model.tiers()], queue=queue, candidate=candidate)


def _queue_settings(model: ModelConfig) -> tuple[object, ...]:
    return (model.max_concurrent, model.max_queue, model.queue_timeout_s, model.queue_headroom)
