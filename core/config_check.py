"""Reading and checking a config: decoding with errors that name the key, and the checks that span keys.

Checks that need the rooms above (provider options, secret references, PII
policies) are ``router.config_resolve``'s, which calls these first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import msgspec

from core.config import CanaryConfig, Config, ConfigError, LiveConfig, ModelConfig, TenantConfig
from core.config_guardrails import GuardrailConfig, Moderation, check_guardrails

T = TypeVar("T")


def decode_config(data: bytes, source: str) -> Config:
    """Decode and validate a config file; every error names ``source`` and the offending key."""
    toml = Path(source).suffix.lower() == ".toml"
    decode = msgspec.toml.decode if toml else msgspec.yaml.decode
    config = _decoded(lambda: decode(data, type=Config), source, "TOML" if toml else "YAML")
    _refuse(cross_check(config), source)
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    source = os.fspath(path)
    try:
        data = Path(source).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    return decode_config(data, source)


def _describe(message: str) -> str:
    # msgspec says "... - at `$.deployments[0]`"; show the path as a config key.
    text, sep, where = message.rpartition(" - at ")
    if not sep:
        return message
    key = where.strip("`").removeprefix("$").removeprefix(".") or "(top level)"
    # A check that names a key below the one msgspec points at ("`patterns[0]` is ..."): one path.
    sub = re.match(r"`([A-Za-z_][\w.\[\]]*)` (.*)", text, re.DOTALL)
    if sub is not None and key != "(top level)":
        return f"key `{key}.{sub.group(1)}`: {sub.group(2)}"
    return f"key `{key}`: {text}"


def cross_check(config: Config) -> list[str]:
    """Checks that span several keys: unique names and references that resolve."""
    return live_problems(config.live()) + _state_problems(config)


def decode_live(data: bytes, source: str) -> LiveConfig:
    """A live document as JSON (the admin API, the version history); errors name the key."""
    live = _decoded(lambda: msgspec.json.decode(data, type=LiveConfig), source, "JSON")
    _refuse(live_problems(live), source)
    return live


def _decoded(decode: Callable[[], T], source: str, syntax: str) -> T:
    try:
        return decode()
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid {syntax}: {exc}") from None


def _refuse(problems: list[str], source: str) -> None:
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))


def live_problems(config: LiveConfig) -> list[str]:
    problems: list[str] = []
    problems += _duplicates("deployments", [d.name for d in config.deployments])
    problems += _duplicates("models", [m.alias for m in config.models])
    problems += _duplicates("tenants", [t.id for t in config.tenants])
    for i, tenant in enumerate(config.tenants):
        # Key ids are unique within their tenant only, as in the PostgreSQL store.
        problems += _duplicates(f"tenants[{i}].keys", [k.id for k in tenant.keys])
    known = {d.name for d in config.deployments}
    for i, model in enumerate(config.models):
        for j, tier in enumerate(model.tiers()):
            for name in tier:
                if name not in known:
                    problems.append(f"key `models[{i}].deployments[{j}]`: unknown deployment {name!r}")
        if model.canary is not None:
            problems += _canary_problems(f"models[{i}].canary", model, model.canary, known)
        if model.cache_price is not None and model.cache is None:
            problems.append(f"key `models[{i}].cache_price`: needs a `cache` block")
        for j, name in enumerate(model.cache.embedding if model.cache is not None else ()):
            if name not in known:
                problems.append(f"key `models[{i}].cache.embedding[{j}]`: unknown deployment {name!r}")
        problems += _guardrail_problems(f"models[{i}].guardrails", model.guardrails, known)
    for i, tenant in enumerate(config.tenants):
        problems += _guardrail_problems(f"tenants[{i}].guardrails", tenant.guardrails, known)
        routing = tenant.routing or config.policies.routing
        for name in routing.allowed_deployments or ():
            if name not in known:
                problems.append(f"key `tenants[{i}].routing.allowed_deployments`: unknown deployment {name!r}")
        aliases = {m.alias for m in config.models}
        for name in routing.allowed_models or ():
            if name not in aliases:
                problems.append(f"key `tenants[{i}].routing.allowed_models`: unknown alias {name!r}")
        for source, target in (routing.downgrade.aliases.items() if routing.downgrade else ()):
            if source not in aliases or target not in aliases:
                problems.append(f"key `tenants[{i}].routing.downgrade.aliases`: unknown alias in {source!r} -> {target!r}")
    for i, dep in enumerate(config.deployments):
        if dep.provider in {"openai_compatible", "azure", "triton"} and not dep.base_url:
            problems.append(f"key `deployments[{i}].base_url`: required for provider {dep.provider!r}")
    return problems + _batch_price_problems(config)


def _guardrail_problems(where: str, guardrails: list[GuardrailConfig], known: set[str]) -> list[str]:
    """Names unique within the list; a moderation guardrail names a configured deployment."""
    problems = []
    try:
        check_guardrails(guardrails)
    except ValueError as exc:
        problems.append(f"key `{where}`: {exc}")
    for j, guardrail in enumerate(guardrails):
        if isinstance(guardrail, Moderation) and guardrail.deployment not in known:
            problems.append(f"key `{where}[{j}].deployment`: unknown deployment {guardrail.deployment!r}")
    return problems


def _canary_problems(where: str, model: ModelConfig, canary: CanaryConfig, known: set[str]) -> list[str]:
    problems = []
    stable = set(model.tiers()[0])
    for j, name in enumerate(canary.candidate):
        if name not in known:
            problems.append(f"key `{where}.candidate[{j}]`: unknown deployment {name!r}")
        elif name in stable and canary.state.phase != "promoted":
            problems.append(f"key `{where}.candidate[{j}]`: {name!r} already serves the alias's first tier")
    if any(b <= a for a, b in zip(canary.steps, canary.steps[1:])):
        problems.append(f"key `{where}.steps`: steps must increase")
    if canary.state.step >= len(canary.steps):
        problems.append(f"key `{where}.state.step`: there are only {len(canary.steps)} steps")
    if canary.state.phase == "shadow" and canary.shadow is None:
        problems.append(f"key `{where}.state.phase`: 'shadow' needs a `shadow` block")
    return problems


def _state_problems(config: Config) -> list[str]:
    """Start-time settings that need one another."""
    state = config.state
    problems = []
    stores = {"tenants": state.tenants, "ledger": state.ledger, "config": state.config, "batches": state.batches}
    needs_postgres = [key for key, store in stores.items() if store == "postgres"]
    if needs_postgres and state.postgres_dsn is None:
        problems.append(f"key `state.postgres_dsn`: required when `state.{needs_postgres[0]}` is 'postgres'")
    if state.files == "s3":
        problems += _s3_problems(config)
    if state.counters == "redis" and not state.redis_url:
        problems.append("key `state.redis_url`: required when `state.counters` is 'redis'")
    if state.cache.backend == "redis" and not state.redis_url:
        problems.append("key `state.redis_url`: required when `state.cache.backend` is 'redis'")
    if state.cache.index == "postgres" and state.postgres_dsn is None:
        problems.append("key `state.postgres_dsn`: required when `state.cache.index` is 'postgres'")
    if state.tenants == "postgres":
        # The store holds tenants, keys, limits and budgets; the live document may
        # give stored tenants their routing, PII, cache and guardrail policies, nothing
        # else. Refuse rather than silently ignore keys an operator expects to work.
        for i, tenant in enumerate(config.tenants):
            policy_only = TenantConfig(
                id=tenant.id, name=tenant.name, routing=tenant.routing, pii=tenant.pii, cache=tenant.cache, guardrails=tenant.guardrails
            )
            for key in TenantConfig.__struct_fields__:
                if getattr(tenant, key) != getattr(policy_only, key):
                    problems.append(
                        f"key `tenants[{i}].{key}`: with `state.tenants: postgres` a tenant here sets only"
                        " `routing`, `pii`, `cache` and `guardrails`; manage the rest with `sluicegate tenants`"
                    )
    return problems


def _s3_problems(config: Config) -> list[str]:
    """`state.files: s3` needs a bucket and credentials to sign with (their values are never read here)."""
    s3 = config.state.s3
    if s3 is None:
        return ["key `state.s3`: required when `state.files` is 's3'"]
    needed = {"bucket": s3.bucket, "access_key_id": s3.access_key_id, "secret_access_key": s3.secret_access_key}
    missing = [key for key, value in needed.items() if not value]
    return [f"key `state.s3.{key}`: required when `state.files` is 's3'" for key in missing]


def _batch_price_problems(config: LiveConfig) -> list[str]:
    """Batch prices are a discount: one above the interactive price is a typo, not a policy."""
    problems = []
    for i, dep in enumerate(config.deployments):
        price = dep.price
        for kind, batch, interactive in (
            ("input", price.batch_input_per_mtok, price.input_per_mtok),
            ("output", price.batch_output_per_mtok, price.output_per_mtok),
        ):
            if batch is not None and batch > interactive:
                problems.append(
                    f"key `deployments[{i}].price.batch_{kind}_per_mtok`: {batch} is above"
                    f" the interactive `{kind}_per_mtok` ({interactive})"
                )
    return problems


def _duplicates(where: str, names: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for name in names:
        if name in seen:
            out.append(f"key `{where}`: duplicate name {name!r}")
        seen.add(name)
    return out
