"""Model alias --> the deployments that may serve a request, in the order to try them.

An alias is a list of tiers in fallback order; a tier with several replicas is
balanced: least outstanding requests by default, or affinity (requests sharing
a session id or a prompt prefix go to the same replica, to reuse its KV cache).
Deployments whose circuit is open are left out.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

import msgspec

from core.config import DeploymentConfig, ModelConfig, RoutingPolicy
from core.errors import ModelNotFound
from policies.fair_queue import FairQueue
from serving.base import Engine
from serving.health import CircuitBreaker, LatencyTracker

_sorted_json = msgspec.json.Encoder(order="sorted").encode


@dataclass(slots=True)
class Deployment:
    config: DeploymentConfig
    engine: Engine
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    latency: LatencyTracker = field(default_factory=LatencyTracker)
    # A digest of ``config`` (part of a response cache key): a changed deployment never serves an old answer.
    version: str = ""

    def __post_init__(self) -> None:
        if not self.version:
            self.version = hashlib.sha256(_sorted_json(self.config)).hexdigest()[:32]

    @property
    def name(self) -> str:
        return self.config.name

    def outstanding(self) -> int:
        load = self.engine.load()
        return load.running + load.waiting


@dataclass(slots=True)
class Alias:
    config: ModelConfig
    tiers: list[list[Deployment]]
    queue: FairQueue | None = None
    # A canary's candidate pool: tried first by requests assigned to it, stable after.
    candidate: list[Deployment] = field(default_factory=list)

    def __post_init__(self) -> None:
        c = self.config
        if self.queue is None and c.max_concurrent is not None:
            self.queue = FairQueue(c.max_concurrent, c.max_queue, c.queue_timeout_s, c.queue_headroom)

    @property
    def name(self) -> str:
        return self.config.alias

    @property
    def deployments(self) -> list[Deployment]:
        return [d for tier in self.tiers for d in tier]


@dataclass(slots=True)
class RoutePlan:
    deployments: list[Deployment]
    reason: str
    # filter name --> deployments it removed
    removed: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class RouteHint:
    """What balancing may look at: the session and the start of the prompt."""

    session_id: str | None = None
    body: dict[str, Any] | None = None


class Router:
    def __init__(self, aliases: list[Alias], rng: random.Random | None = None) -> None:
        self._aliases = {a.name: a for a in aliases}
        self._rng = rng or random.Random()

    def aliases(self) -> list[Alias]:
        return list(self._aliases.values())

    def get(self, model: str, policy: RoutingPolicy | None = None) -> Alias:
        """The alias; with a tenant's ``policy``, a 404 (as for an unknown one) unless the tenant may call it."""
        alias = self._aliases.get(model)
        if alias is None or (policy is not None and policy.allowed_models is not None and model not in policy.allowed_models):
            raise model_not_found(model)
        return alias

    def visible(self, policy: RoutingPolicy) -> list[Alias]:
        """The aliases a tenant may use: allowed by name, with a deployment its policy lets serve it (health aside)."""
        allowed = policy.allowed_models
        return [
            alias for alias in self._aliases.values()
            if (allowed is None or alias.name in allowed)
            and any(_forbidden(d, policy, policy.self_hosted_only) is None for tier in alias.tiers for d in tier)
        ]  # fmt: skip

    def plan(
        self,
        model: str,
        hint: RouteHint | None = None,
        policy: RoutingPolicy | None = None,
        self_hosted_only: bool = False,
        candidate: bool = False,
    ) -> RoutePlan:
        """Deployments to try, best first, and why. Filtered: privacy, region, allow-list, health.

        ``candidate``: the request is assigned to the alias's canary, whose pool
        comes first (filtered as any tier), stable's tiers after it.
        """
        alias = self.get(model)
        policy = policy or _PINNED
        private = self_hosted_only or policy.self_hosted_only
        removed: dict[str, int] = {}
        tiers: list[list[Deployment]] = []
        for tier in [alias.candidate, *alias.tiers] if candidate and alias.candidate else alias.tiers:
            kept = []
            for deployment in tier:
                why = _excluded(deployment, policy, private)
                if why is None:
                    kept.append(deployment)
                else:
                    removed[why] = removed.get(why, 0) + 1
            tiers.append(kept)
        if candidate and alias.candidate:
            # Whatever the strategy, the canary's pool is tried before stable.
            ordered = (
                self._rank(alias.config, tiers[:1], policy.strategy, hint)
                + self._rank(alias.config, tiers[1:], policy.strategy, hint)
            )
        else:
            ordered = self._rank(alias.config, tiers, policy.strategy, hint)
        return RoutePlan(ordered, _reason(policy.strategy, ordered, removed, private), removed)

    def _rank(self, config: ModelConfig, tiers: list[list[Deployment]], strategy: str, hint: RouteHint | None) -> list[Deployment]:
        if strategy == "pinned":
            return [d for tier in tiers for d in (self._balance(config, tier, hint) if len(tier) > 1 else tier)]
        keyed: dict[float, list[Deployment]] = {}
        for rank, tier in enumerate(tiers):
            for deployment in tier:
                if strategy == "cheapest":
                    price = deployment.config.price
                    key = float(price.input_per_mtok + price.output_per_mtok) + rank / 1000
                else:
                    key = deployment.latency.p95() or 0.0
                keyed.setdefault(key, []).append(deployment)
        return [d for key in sorted(keyed) for d in (self._balance(config, keyed[key], hint) if len(keyed[key]) > 1 else keyed[key])]

    def _balance(self, config: ModelConfig, replicas: list[Deployment], hint: RouteHint | None) -> list[Deployment]:
        shuffled = replicas[:]
        self._rng.shuffle(shuffled)  # ties go to a random replica
        by_load = sorted(shuffled, key=Deployment.outstanding)
        if config.balance != "affinity" or hint is None:
            return by_load
        key = affinity_key(hint, config.affinity_prefix_chars)
        if key is None:
            return by_load
        preferred = max(replicas, key=lambda d: _rendezvous(key, d.name))
        return [preferred, *(d for d in by_load if d is not preferred)]


_PINNED = RoutingPolicy()


def model_not_found(model: str) -> ModelNotFound:
    """The one 404 for a model that does not exist and for one the caller may not use: the two look alike."""
    return ModelNotFound(f"The model `{model[:200]}` does not exist or you do not have access to it.", param="model")


def _excluded(deployment: Deployment, policy: RoutingPolicy, private: bool) -> str | None:
    why = _forbidden(deployment, policy, private)
    if why is None and not deployment.breaker.would_allow():
        return "unhealthy"
    return why


def _forbidden(deployment: Deployment, policy: RoutingPolicy, private: bool) -> str | None:
    """Why the tenant's policy keeps a request off ``deployment``, whatever its health."""
    config = deployment.config
    if private and config.privacy != "self_hosted":
        return "privacy"
    if policy.regions is not None and config.region not in policy.regions:
        return "region"
    if policy.allowed_deployments is not None and config.name not in policy.allowed_deployments:
        return "not_allowed"
    return None


def _reason(strategy: str, ordered: list[Deployment], removed: dict[str, int], private: bool) -> str:
    """A short, stable explanation for the response header and the ledger."""
    head = f"{strategy}:{ordered[0].name}" if ordered else f"{strategy}:none"
    if not removed and not private:
        return head  # the usual case: nothing else to say
    parts = [head]
    if private:
        parts.append("self_hosted_only")
    parts += [f"-{name}={count}" for name, count in sorted(removed.items())]
    return ",".join(parts)


def affinity_key(hint: RouteHint, prefix_chars: int) -> str | None:
    if hint.session_id:
        return "s:" + hint.session_id
    body = hint.body or {}
    prefix = _prompt_prefix(body, prefix_chars)
    return "p:" + prefix if prefix else None


def _prompt_prefix(body: dict[str, Any], limit: int) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt[:limit]
    parts: list[str] = []
    size = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        text = content if isinstance(content, str) else ""
        parts.append(text)
        size += len(text)
        if size >= limit:
            break
    return "\x1e".join(parts)[:limit]


def _rendezvous(key: str, replica: str) -> int:
    # Highest-random-weight hashing: adding or removing a replica moves only its own keys.
    digest = hashlib.blake2b(f"{key}\x00{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
