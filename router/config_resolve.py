"""The one validation of a config: the CLI's `config check`, start-up and every reload call it.

Structure and cross references are checked when the document is decoded
(``core.config``); here, what needs the rooms above: each deployment's
provider options and secret references, and each PII policy. Nothing is
started or connected; an error names the key and never a secret's value.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config import Config, ConfigError, DeploymentConfig, ResilienceConfig
from core.config_check import cross_check
from core.config_guardrails import PluginGuardrail
from policies.tenant_policy import TenantPolicies
from router.plugins import Loaded, check
from serving.base import EngineSpec, Timeouts
from serving.health import BreakerSettings
from serving.registry import PluginEngineOptions, ProviderError, parse_options
from serving.retry import RetryPolicy


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a snapshot is built from, every part already valid."""

    config: Config
    specs: dict[str, EngineSpec]
    policies: TenantPolicies
    retry: RetryPolicy
    breaker: BreakerSettings
    # The enabled plugins, found and their options decoded, in config order.
    plugins: tuple[Loaded, ...] = ()


def resolve(config: Config) -> Resolved:
    """Check everything a config needs to serve; ``ConfigError`` lists every problem found."""
    problems = cross_check(config)
    specs: dict[str, EngineSpec] = {}
    for i, dep in enumerate(config.deployments):
        try:
            specs[dep.name] = engine_spec(i, dep)
        except ConfigError as exc:
            problems.append(str(exc))
    plugins, plugin_problems = check(config.plugins)
    problems += plugin_problems
    engines = {name for entry in plugins for name in entry.cls.engine_names}
    for i, dep in enumerate(config.deployments):
        options = specs[dep.name].options if dep.name in specs else None
        if isinstance(options, PluginEngineOptions) and options.engine not in engines and not plugin_problems:
            offered = ", ".join(sorted(engines)) or "none"
            problems.append(
                f"key `deployments[{i}].options.engine`: no enabled plugin offers engine {options.engine!r} (offered: {offered})"
            )
    if not plugin_problems:
        problems += _plugin_guardrail_problems(config, {name for entry in plugins for name in entry.cls.guardrail_names})
    policies: TenantPolicies | None = None
    try:
        policies = TenantPolicies(config)
    except ConfigError as exc:
        problems.append(str(exc))
    if problems or policies is None:
        raise ConfigError("\n".join(problems))
    r = config.resilience
    return Resolved(
        config=config, specs=specs, policies=policies, retry=retry_policy(r), breaker=breaker_settings(r), plugins=tuple(plugins)
    )


def _plugin_guardrail_problems(config: Config, offered: set[str]) -> list[str]:
    """A ``kind: plugin`` guardrail names a guardrail an enabled plugin offers."""
    lists = [(f"tenants[{i}]", t.guardrails) for i, t in enumerate(config.tenants)]
    lists += [(f"models[{i}]", m.guardrails) for i, m in enumerate(config.models)]
    names = ", ".join(sorted(offered)) or "none"
    return [
        f"key `{where}.guardrails[{j}].plugin`: no enabled plugin offers guardrail {g.plugin!r} (offered: {names})"
        for where, guardrails in lists
        for j, g in enumerate(guardrails)
        if isinstance(g, PluginGuardrail) and g.plugin not in offered
    ]


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


def retry_policy(r: ResilienceConfig) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=r.max_attempts, backoff_base_s=r.backoff_base_s, backoff_max_s=r.backoff_max_s, max_retry_after_s=r.max_retry_after_s
    )


def breaker_settings(r: ResilienceConfig) -> BreakerSettings:
    return BreakerSettings(
        consecutive_failures=r.breaker_consecutive_failures,
        error_rate=r.breaker_error_rate,
        window_s=r.breaker_window_s,
        min_requests=r.breaker_min_requests,
        open_s=r.breaker_open_s,
    )
