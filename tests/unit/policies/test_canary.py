from __future__ import annotations

import os
import random
import subprocess
import sys
from typing import Any

import msgspec
import pytest

from core.config import CanaryConfig, ModelConfig
from policies.canary import apply, assign, decide
from policies.canary_samples import Arm, Sample, WindowStats, add_sample, window_stats

NO_GATES: dict[str, Any] = {
    "max_error_rate": None,
    "max_error_rate_increase": None,
    "max_p95_latency_ratio": None,
    "max_p95_ttft_ratio": None,
}
SINCE = 1_000.0


def make_canary(
    phase: str = "canary", step: int = 0, gates: dict[str, Any] | None = None, paused_from: str | None = None, **extra: Any
) -> CanaryConfig:
    raw: dict[str, Any] = {
        "candidate": ["cand"],
        "steps": [5, 25, 100],
        "interval_s": 60,
        "min_samples": 50,
        "shadow": {"share": 0.5},
        "state": {"phase": phase, "step": step, "since": SINCE, "paused_from": paused_from},
        **extra,
    }
    if gates is not None:
        raw["gates"] = gates
    return msgspec.convert(raw, CanaryConfig)


def make_model(canary: CanaryConfig | None, deployments: list[Any] | None = None) -> ModelConfig:
    return ModelConfig(alias="chat", deployments=deployments or ["old", "fallback"], canary=canary)


def samples(
    arm: Arm, n: int, errors: int = 0, latency_ms: float = 100.0, ttft_ms: float | None = None, cost_pico: int = 1000
) -> list[Sample]:
    return [Sample(arm, i >= errors, latency_ms, ttft_ms, cost_pico) for i in range(n)]


def window(*groups: list[Sample]) -> WindowStats:
    fields: dict[str, int] = {}
    for group in groups:
        for sample in group:
            add_sample(fields, sample)
    return window_stats(fields)


HEALTHY = window(samples("candidate", 100), samples("stable", 100))
LATER = SINCE + 60


# --- assign -----------------------------------------------------------------------


def test_assign_weight_zero_and_hundred() -> None:
    rng = random.Random(1)
    paused = make_canary("paused", paused_from="canary")
    shadow = make_canary("shadow")
    full = make_canary("canary", step=2)
    for i in range(500):
        for canary in (paused, shadow):
            assert assign(canary, "chat", None, rng) == "stable"
            assert assign(canary, "chat", f"s{i}", rng) == "stable"
        assert assign(full, "chat", None, rng) == "candidate"
        assert assign(full, "chat", f"s{i}", rng) == "candidate"


def test_assign_without_key_follows_the_weight() -> None:
    rng = random.Random(7)
    canary = make_canary(step=1)  # 25%
    share = sum(assign(canary, "chat", None, rng) == "candidate" for _ in range(20_000)) / 20_000
    assert 0.235 < share < 0.265


def test_sticky_key_keeps_its_arm_and_grows_with_the_weight() -> None:
    keys = [f"session-{i}" for i in range(4_000)]
    chosen: list[set[str]] = []
    for step, weight in enumerate((5, 25, 100)):
        canary = make_canary(step=step)
        first = {k for k in keys if assign(canary, "chat", k, random.Random(1)) == "candidate"}
        # Another RNG state changes nothing for a sticky key.
        again = {k for k in keys if assign(canary, "chat", k, random.Random(99)) == "candidate"}
        assert first == again
        assert abs(len(first) / len(keys) - weight / 100) < 0.025
        chosen.append(first)
    assert chosen[0] < chosen[1] < chosen[2]


def test_sticky_assignment_is_the_same_in_every_process() -> None:
    script = (
        "import random, msgspec\n"
        "from core.config import CanaryConfig\n"
        "from policies.canary import assign\n"
        "c = msgspec.convert({'candidate': ['x'], 'steps': [50, 100]}, CanaryConfig)\n"
        "print(''.join(assign(c, 'chat', f'k{i}', random.Random())[0] for i in range(64)))\n"
    )
    runs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        runs.add(done.stdout.strip())
    assert len(runs) == 1
    assert set(runs.pop()) == {"s", "c"}


# --- decide -----------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["paused", "promoted", "rolled_back"])
def test_inactive_phases_hold(phase: str) -> None:
    bad = window(samples("candidate", 100, errors=100), samples("stable", 100))
    extra = {"paused_from": "canary"} if phase == "paused" else {}
    canary = msgspec.convert({"candidate": ["cand"], "state": {"phase": phase, **extra}}, CanaryConfig)
    decision = decide(canary, bad, LATER, candidate_healthy=False)
    assert decision.action == "hold"
    assert phase in decision.reason


def test_unhealthy_candidate_rolls_back_without_samples() -> None:
    decision = decide(make_canary(), WindowStats(), LATER, candidate_healthy=False)
    assert decision.action == "rollback"
    assert "unhealthy" in decision.reason


@pytest.mark.parametrize("errors", [0, 49])
def test_too_few_samples_hold_whatever_the_numbers(errors: int) -> None:
    stats = window(samples("candidate", 49, errors=errors), samples("stable", 1_000))
    decision = decide(make_canary(step=2), stats, SINCE + 10_000, True)
    assert decision.action == "hold"
    assert decision.reason == "too few samples: 49 of 50"


GATE_CASES = [
    ({"max_error_rate": 0.05}, samples("candidate", 50, errors=15), samples("stable", 50),
     "candidate error rate 0.3 > 0.05 (max_error_rate)"),
    ({"max_error_rate_increase": 0.02}, samples("candidate", 100, errors=4), samples("stable", 100, errors=1), "(max_error_rate_increase)"),
    ({"max_p95_latency_ms": 1000}, samples("candidate", 50, latency_ms=2000), samples("stable", 50), "(max_p95_latency_ms)"),
    ({"max_p95_latency_ratio": 1.5}, samples("candidate", 50, latency_ms=300), samples("stable", 50), "(max_p95_latency_ratio)"),
    ({"max_p95_ttft_ms": 500}, samples("candidate", 50, ttft_ms=900), samples("stable", 50), "(max_p95_ttft_ms)"),
    ({"max_p95_ttft_ratio": 1.5}, samples("candidate", 50, ttft_ms=500), samples("stable", 50, ttft_ms=100), "(max_p95_ttft_ratio)"),
    ({"max_cost_ratio": 2}, samples("candidate", 50, cost_pico=3000), samples("stable", 50, cost_pico=1000), "(max_cost_ratio)"),
    ({"max_cost_ratio": 2}, samples("candidate", 50, cost_pico=10), samples("stable", 50, cost_pico=0), "stable nothing (max_cost_ratio)"),
]


@pytest.mark.parametrize(("gate", "candidate", "stable", "reason"), GATE_CASES)
def test_each_gate_rolls_back(gate: dict[str, float], candidate: list[Sample], stable: list[Sample], reason: str) -> None:
    stats = window(candidate, stable)
    breached = decide(make_canary(gates={**NO_GATES, **gate}), stats, LATER, True)
    assert breached.action == "rollback"
    assert breached.reason.endswith(reason)
    # The same numbers with every gate off move on: the gate is what rolled back.
    assert decide(make_canary(gates=NO_GATES), stats, LATER, True).action == "step"


def test_a_gate_is_not_breached_at_its_limit() -> None:
    stats = window(samples("candidate", 100, errors=7), samples("stable", 100, errors=5))
    gates = {**NO_GATES, "max_error_rate": 0.07, "max_error_rate_increase": 0.02}
    assert decide(make_canary(gates=gates), stats, LATER, True).action == "step"


def test_relative_gates_wait_for_stable_samples() -> None:
    gates = {**NO_GATES, "max_error_rate_increase": 0.02, "max_p95_latency_ratio": 1.5, "max_cost_ratio": 1.1}
    candidate = samples("candidate", 100, errors=10, latency_ms=900, cost_pico=9000)
    short = decide(make_canary(gates=gates), window(candidate, samples("stable", 49)), LATER, True)
    assert short.action == "step"
    assert "relative gates skipped: stable has 49 of 50 samples" in short.reason
    enough = decide(make_canary(gates=gates), window(candidate, samples("stable", 50)), LATER, True)
    assert enough.action == "rollback"
    for gate in ("max_error_rate_increase", "max_p95_latency_ratio", "max_cost_ratio"):
        assert f"({gate})" in enough.reason


def test_ttft_gates_need_ttft_samples() -> None:
    gates = {**NO_GATES, "max_p95_ttft_ms": 500, "max_p95_ttft_ratio": 1.5}
    # Non-streamed requests have no TTFT: nothing to judge.
    none = decide(make_canary(gates=gates), window(samples("candidate", 100), samples("stable", 100)), LATER, True)
    assert none.action == "step"
    assert "max_p95_ttft_ms skipped" in none.reason
    # Stable has no TTFT samples: the ratio is skipped, the absolute gate still holds.
    slow = samples("candidate", 100, ttft_ms=400)
    ratio_only = decide(make_canary(gates=gates), window(slow, samples("stable", 100)), LATER, True)
    assert ratio_only.action == "step"
    assert "max_p95_ttft_ratio skipped" in ratio_only.reason
    breached = decide(make_canary(gates=gates), window(slow, samples("stable", 100, ttft_ms=100)), LATER, True)
    assert breached.action == "rollback"
    assert "(max_p95_ttft_ratio)" in breached.reason


def test_hold_until_the_interval_has_passed() -> None:
    held = decide(make_canary(), HEALTHY, LATER - 1, True)
    assert held.action == "hold"
    assert held.reason.startswith("gates pass")
    assert "59s of 60s" in held.reason
    stepped = decide(make_canary(), HEALTHY, LATER, True)
    assert stepped.action == "step"
    assert "5% -> 25%" in stepped.reason


def test_shadow_enters_canary_and_last_step_promotes() -> None:
    assert decide(make_canary("shadow"), HEALTHY, LATER, True).action == "enter_canary"
    assert decide(make_canary("shadow"), HEALTHY, LATER - 1, True).action == "hold"
    assert decide(make_canary(step=1), HEALTHY, LATER, True).action == "step"
    assert decide(make_canary(step=2), HEALTHY, LATER, True).action == "promote"


def test_decision_carries_both_arms_numbers() -> None:
    stats = window(samples("candidate", 60, errors=3, latency_ms=200, ttft_ms=50, cost_pico=500), samples("stable", 80))
    numbers = decide(make_canary(), stats, LATER, True).numbers
    assert numbers["candidate_requests"] == 60
    assert numbers["candidate_errors"] == 3
    assert numbers["candidate_error_rate"] == pytest.approx(0.05)
    assert numbers["candidate_p95_ttft_ms"] is not None
    assert numbers["candidate_cost_per_request"] == 500
    assert numbers["stable_requests"] == 80
    assert numbers["stable_p95_ttft_ms"] is None
    p95 = numbers["stable_p95_latency_ms"]
    assert p95 is not None and 100 <= p95 < 120


# --- apply ------------------------------------------------------------------------


def state_of(model: ModelConfig) -> tuple[str, int, float, str | None, str, str]:
    assert model.canary is not None
    s = model.canary.state
    return s.phase, s.step, s.since, s.paused_from, s.decision, s.reason


def test_apply_moves_through_the_phases_without_mutating() -> None:
    model = make_model(make_canary("shadow"))
    entered = apply(model, "enter_canary", 2_000.0, "gates pass")
    assert state_of(entered) == ("canary", 0, 2_000.0, None, "enter_canary", "gates pass")
    assert state_of(model)[0] == "shadow"
    stepped = apply(entered, "step", 3_000.0, "next")
    assert state_of(stepped) == ("canary", 1, 3_000.0, None, "step", "next")
    assert state_of(entered)[1] == 0
    assert apply(stepped, "hold", 4_000.0, "wait") is stepped


def test_promote_replaces_the_first_tier() -> None:
    model = make_model(make_canary(step=2))
    promoted = apply(model, "promote", 5_000.0, "done")
    assert promoted.deployments == ["cand", "fallback"]
    assert state_of(promoted)[0] == "promoted"
    assert model.deployments == ["old", "fallback"]
    pool = make_model(make_canary(step=2, candidate=["c1", "c2"]), deployments=[["o1", "o2"], "fallback"])
    assert apply(pool, "promote", 5_000.0, "done").deployments == [["c1", "c2"], "fallback"]


@pytest.mark.parametrize("action", ["rollback", "abort"])
def test_rollback_and_abort(action: str) -> None:
    rolled = apply(make_model(make_canary(step=1)), action, 6_000.0, "why")
    assert state_of(rolled) == ("rolled_back", 1, 6_000.0, None, action, "why")
    assert rolled.deployments == ["old", "fallback"]


@pytest.mark.parametrize("phase", ["shadow", "canary"])
def test_pause_and_resume_return_to_the_phase(phase: str) -> None:
    paused = apply(make_model(make_canary(phase, step=0)), "pause", 7_000.0, "look")
    assert state_of(paused) == ("paused", 0, 7_000.0, phase, "pause", "look")
    assert paused.canary is not None and paused.canary.weight() == 0
    resumed = apply(paused, "resume", 8_000.0, "go")
    assert state_of(resumed) == (phase, 0, 8_000.0, None, "resume", "go")


REFUSED = [
    ("rolled_back", "promote", "cannot promote"),
    ("promoted", "rollback", "cannot rollback"),
    ("canary", "resume", "cannot resume"),
    ("rolled_back", "pause", "cannot pause"),
    ("canary", "enter_canary", "cannot enter_canary"),
    ("shadow", "step", "cannot step"),
    ("canary", "explode", "unknown canary action 'explode'"),
]


@pytest.mark.parametrize(("phase", "action", "message"), REFUSED)
def test_invalid_transitions_are_refused(phase: str, action: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply(make_model(make_canary(phase)), action, 9_000.0, "no")


def test_refusals_of_last_step_resume_without_origin_and_no_canary() -> None:
    with pytest.raises(ValueError, match="last step"):
        apply(make_model(make_canary(step=2)), "step", 9_000.0, "no")
    with pytest.raises(ValueError, match="paused from"):
        apply(make_model(make_canary("paused")), "resume", 9_000.0, "no")
    with pytest.raises(ValueError, match="no canary"):
        apply(make_model(None), "pause", 9_000.0, "no")
