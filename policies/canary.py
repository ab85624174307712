"""Canary analysis: which arm serves a request, what the numbers say, and the next state.

Pure functions, no I/O. ``assign`` runs per request; ``decide`` runs on the one
replica that decides, on every replica's samples for the current step;
``apply`` turns a decision or an operator's action into the next model config,
which the caller writes as a new config version.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

import msgspec

from core.config import CanaryConfig, CanaryPhase, CanaryState, ModelConfig
from policies.canary_samples import Arm, ArmStats, WindowStats

__all__ = ["ACTIONS", "Arm", "Decision", "apply", "assign", "decide"]

Action = Literal["hold", "enter_canary", "step", "promote", "rollback"]
Numbers = dict[str, float | int | None]

# Operator actions and decisions --> the phases they may start from.
_ALLOWED_FROM: dict[str, tuple[CanaryPhase, ...]] = {
    "enter_canary": ("shadow",),
    "step": ("canary",),
    "promote": ("shadow", "canary", "paused"),
    "rollback": ("shadow", "canary", "paused"),
    "abort": ("shadow", "canary", "paused"),
    "pause": ("shadow", "canary"),
    "resume": ("paused",),
}
ACTIONS = ("hold", *_ALLOWED_FROM)
# Float noise (0.07 - 0.05 is 0.020000000000000004) must not breach a gate set at the same value.
_EPSILON = 1e-9


def assign(canary: CanaryConfig, alias: str, sticky_key: str | None, rng: random.Random) -> Arm:
    """The arm a request goes to at the canary's current weight.

    A sticky key maps to a fixed point in [0, 10000): the session stays on its
    arm at one weight, and a candidate session stays candidate as the weight grows.
    """
    weight = canary.weight()
    if weight <= 0:
        return "stable"
    if weight >= 100:
        return "candidate"
    if sticky_key is None:
        return "candidate" if rng.random() * 100 < weight else "stable"
    digest = hashlib.blake2b(f"{alias}\x00{sticky_key}".encode(), digest_size=8).digest()
    return "candidate" if int.from_bytes(digest, "big") % 10_000 < weight * 100 else "stable"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    # For people: names the gate and the numbers behind it.
    reason: str
    # Both arms' numbers this decision saw, named `<arm>_<number>`.
    numbers: Numbers


def decide(canary: CanaryConfig, stats: WindowStats, now: float, candidate_healthy: bool) -> Decision:
    """What to do with a canary given both arms' samples of its current step."""
    numbers = _numbers(stats)
    state = canary.state
    if state.phase not in ("shadow", "canary"):
        return Decision("hold", f"canary is {state.phase}: nothing to decide", numbers)
    if not candidate_healthy:
        return Decision("rollback", "candidate unhealthy: none of its deployments can take requests", numbers)
    if stats.candidate.requests < canary.min_samples:
        return Decision("hold", f"too few samples: {stats.candidate.requests} of {canary.min_samples}", numbers)
    breaches, skipped = _gates(canary, stats)
    if breaches:
        return Decision("rollback", "; ".join(breaches), numbers)
    passed = "gates pass" + (f" ({'; '.join(skipped)})" if skipped else "")
    waited = now - state.since
    if waited < canary.interval_s:
        return Decision("hold", f"{passed}; {waited:.0f}s of {canary.interval_s:g}s in this {_where(canary)}", numbers)
    if state.phase == "shadow":
        return Decision("enter_canary", f"{passed} in the shadow phase; first step {canary.steps[0]:g}%", numbers)
    if state.step >= len(canary.steps) - 1:
        return Decision("promote", f"{passed} at the last step ({canary.weight():g}%)", numbers)
    return Decision("step", f"{passed}; {canary.steps[state.step]:g}% -> {canary.steps[state.step + 1]:g}%", numbers)


def _where(canary: CanaryConfig) -> str:
    return "shadow phase" if canary.state.phase == "shadow" else f"step ({canary.weight():g}%)"


def _gates(canary: CanaryConfig, stats: WindowStats) -> tuple[list[str], list[str]]:
    """The gates breached, and the gates skipped (with why), as sentences."""
    gates, cand, stable, least = canary.gates, stats.candidate, stats.stable, canary.min_samples
    breaches: list[str] = []
    skipped: list[str] = []
    _over(breaches, "candidate error rate", cand.error_rate, gates.max_error_rate, "max_error_rate")
    _over(breaches, "candidate p95 latency", cand.p95_latency_ms, gates.max_p95_latency_ms, "max_p95_latency_ms", "ms")
    if gates.max_p95_ttft_ms is not None and cand.ttft_samples < least:
        skipped.append(f"max_p95_ttft_ms skipped: candidate has {cand.ttft_samples} of {least} TTFT samples")
    elif cand.ttft_samples >= least:
        _over(breaches, "candidate p95 TTFT", cand.p95_ttft_ms, gates.max_p95_ttft_ms, "max_p95_ttft_ms", "ms")
    relative = (gates.max_error_rate_increase, gates.max_p95_latency_ratio, gates.max_p95_ttft_ratio, gates.max_cost_ratio)
    if all(limit is None for limit in relative):
        return breaches, skipped
    if stable.requests < least:
        skipped.append(f"relative gates skipped: stable has {stable.requests} of {least} samples")
        return breaches, skipped
    rates = f"candidate error rate {cand.error_rate:.3g} exceeds stable's {stable.error_rate:.3g} by"
    _over(breaches, rates, cand.error_rate - stable.error_rate, gates.max_error_rate_increase, "max_error_rate_increase")
    latency = _ratio(cand.p95_latency_ms, stable.p95_latency_ms)
    _over(breaches, "candidate/stable p95 latency ratio", latency, gates.max_p95_latency_ratio, "max_p95_latency_ratio")
    if gates.max_p95_ttft_ratio is not None and min(cand.ttft_samples, stable.ttft_samples) < least:
        counts = f"candidate {cand.ttft_samples}, stable {stable.ttft_samples}"
        skipped.append(f"max_p95_ttft_ratio skipped: TTFT samples {counts}, of {least}")
    else:
        ttft = _ratio(cand.p95_ttft_ms, stable.p95_ttft_ms)
        _over(breaches, "candidate/stable p95 TTFT ratio", ttft, gates.max_p95_ttft_ratio, "max_p95_ttft_ratio")
    _cost(breaches, cand, stable, gates.max_cost_ratio)
    return breaches, skipped


def _over(breaches: list[str], what: str, value: float | None, limit: float | None, gate: str, unit: str = "") -> None:
    if value is not None and limit is not None and value - limit > _EPSILON:
        breaches.append(f"{what} {value:.4g}{unit} > {limit:g}{unit} ({gate})")


def _ratio(candidate: float | None, stable: float | None) -> float | None:
    return candidate / stable if candidate is not None and stable else None


def _cost(breaches: list[str], cand: ArmStats, stable: ArmStats, limit: float | None) -> None:
    if limit is None:
        return
    if stable.cost_per_request == 0 and cand.cost_per_request > 0:
        # No ratio of a free stable is small enough.
        breaches.append(f"candidate costs {cand.cost_per_request:.4g} pico-USD per request, stable nothing (max_cost_ratio)")
        return
    ratio = _ratio(cand.cost_per_request, stable.cost_per_request)
    _over(breaches, "candidate/stable cost per request ratio", ratio, limit, "max_cost_ratio")


def _numbers(stats: WindowStats) -> Numbers:
    numbers: Numbers = {}
    for name, arm in (("stable", stats.stable), ("candidate", stats.candidate)):
        numbers[f"{name}_requests"] = arm.requests
        numbers[f"{name}_errors"] = arm.errors
        numbers[f"{name}_error_rate"] = arm.error_rate
        numbers[f"{name}_p95_latency_ms"] = arm.p95_latency_ms
        numbers[f"{name}_p95_ttft_ms"] = arm.p95_ttft_ms
        numbers[f"{name}_cost_per_request"] = arm.cost_per_request
    return numbers


def apply(model: ModelConfig, action: str, now: float, reason: str) -> ModelConfig:
    """The model config after a decision or an operator's action; ValueError when the canary's phase does not allow it.

    Actions: enter_canary, step, promote, rollback, pause, resume, abort; hold changes nothing.
    """
    if action == "hold":
        return model
    canary = model.canary
    if canary is None:
        raise ValueError(f"model {model.alias!r} has no canary")
    allowed = _ALLOWED_FROM.get(action)
    if allowed is None:
        raise ValueError(f"unknown canary action {action!r}; expected one of {', '.join(ACTIONS)}")
    old = canary.state
    if old.phase not in allowed:
        raise ValueError(f"cannot {action} the canary of {model.alias!r}: it is {old.phase} (possible only when {' or '.join(allowed)})")
    state = msgspec.structs.replace(old, since=now, decision=action, reason=reason, paused_from=None)
    deployments = model.deployments
    if action == "enter_canary":
        state = msgspec.structs.replace(state, phase="canary", step=0)
    elif action == "step":
        if old.step + 1 >= len(canary.steps):
            raise ValueError(f"cannot step the canary of {model.alias!r}: it is at its last step ({canary.weight():g}%)")
        state = msgspec.structs.replace(state, step=old.step + 1)
    elif action == "promote":
        state = msgspec.structs.replace(state, phase="promoted")
        first: str | list[str] = canary.candidate[0] if len(canary.candidate) == 1 else list(canary.candidate)
        deployments = [first, *model.deployments[1:]]
    elif action == "pause":
        state = msgspec.structs.replace(state, phase="paused", paused_from=old.phase)
    elif action == "resume":
        state = _resumed(model.alias, old, state)
    else:  # rollback, abort
        state = msgspec.structs.replace(state, phase="rolled_back")
    return msgspec.structs.replace(model, deployments=deployments, canary=msgspec.structs.replace(canary, state=state))


def _resumed(alias: str, old: CanaryState, state: CanaryState) -> CanaryState:
    if old.paused_from is None:
        raise ValueError(f"cannot resume the canary of {alias!r}: it does not say which phase it was paused from")
    return msgspec.structs.replace(state, phase=old.paused_from)
