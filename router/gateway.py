"""Config --> the running parts: engines, router, key store, pipeline, metrics."""

from __future__ import annotations

import asyncio
import logging

from policies.routing import Alias, Deployment, Router
from router.auth import KeyStore
from router.config import Config, ConfigError, DeploymentConfig
from router.metrics import Metrics
from router.pipeline import Pipeline
from serving.base import Engine, EngineSpec, Timeouts
from serving.registry import ProviderError, build_engine, parse_options

log = logging.getLogger("sluicegate")


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
        self.keys = KeyStore(config, pepper)
        self.engines: dict[str, Engine] = {}
        deployments: dict[str, Deployment] = {}
        for i, dep in enumerate(config.deployments):
            engine = build_engine(engine_spec(i, dep))
            self.engines[dep.name] = engine
            deployments[dep.name] = Deployment(config=dep, engine=engine)
        aliases = [Alias(config=m, deployments=[deployments[d] for d in m.deployments]) for m in config.models]
        self.router = Router(aliases)
        self.pipeline = Pipeline(self.router, self.metrics)
        self.metrics.track_engine_load(self.engine_load)
        self.started = False

    async def start(self) -> None:
        await asyncio.gather(*(engine.start() for engine in self.engines.values()))
        self.started = True

    async def stop(self) -> None:
        self.started = False
        results = await asyncio.gather(*(e.close() for e in self.engines.values()), return_exceptions=True)
        for name, result in zip(self.engines, results):
            if isinstance(result, Exception):
                log.warning("deployment %s did not close cleanly: %s", name, type(result).__name__)

    def engine_load(self) -> dict[str, tuple[int, int]]:
        out = {}
        for name, engine in self.engines.items():
            load = engine.load()
            out[name] = (load.running, load.waiting)
        return out

    async def readiness(self) -> dict[str, bool]:
        """Dependencies the gateway needs to serve; upstream health is reported, not required."""
        return {"started": self.started}

    async def deployment_health(self) -> dict[str, bool]:
        names = list(self.engines)
        results = await asyncio.gather(*(self.engines[n].health() for n in names), return_exceptions=True)
        return {n: r is True for n, r in zip(names, results)}
