"""Two servers measured at the same moment, on the same core: the cost of one relative to the other.

A shared machine drifts (other tenants, clock frequency, cache pressure) by
more than the few percent being measured, so two servers measured one after
the other compare moments as much as servers. Here both are under load at
once, pinned to one CPU, each driven by its own wrk: whatever the machine does
during a round, it does to both. Each round gives the target's server CPU
time per request as a percentage of the base's; a target compared with a twin
of the base shows how close to 100% the method itself stays. The two swap
places every round (whose wrk starts first, whose counters are read first):
measured without the swap, the second place read 3-4% cheaper than the first
for two identical servers.
"""

from __future__ import annotations

import statistics
import threading
from dataclasses import dataclass, field

from bench.processes import Server
from bench.wrk import WrkResult, run_wrk


@dataclass(frozen=True, slots=True)
class Side:
    """One server of a pair and the request it is sent."""

    server: Server
    url: str
    body: bytes
    headers: dict[str, str]


@dataclass(slots=True)
class PairResult:
    target: str
    base: str
    mode: str
    # Per round: CPU microseconds per request of the base and of the target.
    base_cpu_us: list[float] = field(default_factory=list)
    target_cpu_us: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [100 * t / b for b, t in zip(self.base_cpu_us, self.target_cpu_us) if b]

    def summary(self) -> tuple[float, float, float]:
        """(median, lowest, highest) of the per-round ratios, in %."""
        ratios = self.ratios
        return round(statistics.median(ratios), 1), round(min(ratios), 1), round(max(ratios), 1)


def run_together(sides: list[Side], duration_s: int, concurrency: int, cpus: set[int] | None) -> list[WrkResult]:
    """One wrk per side, all started at once; their results in the same order."""
    results: list[WrkResult | BaseException | None] = [None] * len(sides)

    def drive(index: int, side: Side) -> None:
        try:
            results[index] = run_wrk(side.url, side.body, side.headers, duration_s=duration_s, concurrency=concurrency, cpus=cpus)
        except BaseException as exc:  # re-raised on the calling thread
            results[index] = exc

    threads = [threading.Thread(target=drive, args=(i, side)) for i, side in enumerate(sides)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done: list[WrkResult] = []
    for result in results:
        if not isinstance(result, WrkResult):
            raise RuntimeError(f"wrk failed: {result}")
        done.append(result)
    return done


def measure_pair(
    base: Side,
    target: Side,
    labels: tuple[str, str, str],
    *,
    rounds: int,
    duration_s: int,
    warmup_s: int,
    concurrency: int,
    cpus: tuple[set[int], set[int]] | None,
) -> PairResult:
    """``rounds`` simultaneous measurements; ``labels`` is (target, base, mode).

    ``cpus`` is (CPUs for wrk, CPU both servers share), or None to leave placement to the OS.
    """
    load_cpus = None
    if cpus is not None:
        load_cpus, own = cpus
        base.server.pin(own)
        target.server.pin(own)
    result = PairResult(*labels)
    if warmup_s > 0:
        run_together([base, target], warmup_s, concurrency, load_cpus)
    for number in range(rounds):
        sides = [base, target] if number % 2 == 0 else [target, base]
        before = [side.server.cpu_seconds() for side in sides]
        answers = run_together(sides, duration_s, concurrency, load_cpus)
        cpu = [
            (side.server.cpu_seconds() - start) / answer.requests * 1e6 if answer.requests else 0.0
            for side, start, answer in zip(sides, before, answers)
        ]
        if number % 2:
            cpu.reverse()
        result.base_cpu_us.append(round(cpu[0], 1))
        result.target_cpu_us.append(round(cpu[1], 1))
    return result


def render_pairs(results: list[PairResult]) -> str:
    lines = [f"{'paired, CPU/req as % of':<26} {'mode':<10} {'median':>7} {'range':>14} {'base us':>8} {'target us':>9}"]
    for r in results:
        mid, low, high = r.summary()
        lines.append(
            f"{r.target + ' vs ' + r.base:<26} {r.mode:<10} {mid:6.1f}% {f'{low:.1f}-{high:.1f}':>14} "
            f"{statistics.median(r.base_cpu_us):8.1f} {statistics.median(r.target_cpu_us):9.1f}"
        )
    return "\n".join(lines)
