"""Several workers write into one PROMETHEUS_MULTIPROC_DIR: figures read from live state are aggregated too.

Each worker is a real process (prometheus_client picks its multiprocess mode at
import, from the environment), as under ``sluicegate serve --workers N``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from router.metrics import Metrics

ROOT = Path(__file__).resolve().parents[3]

# argv: worker index, "start" (refresh from the event loop), "refresh" (once, by hand) or "made" (still starting
# up: nothing copied yet), "close" to stop cleanly.
WORKER = """
import asyncio, sys
from budgets.accounting import Reservation
from budgets.ledger import LedgerBacklog
from budgets.store import BudgetRule, Plan
from core.principal import Principal
from router.metrics import Metrics

index, how, close = int(sys.argv[1]), sys.argv[2], len(sys.argv) > 3
metrics = Metrics()
assert metrics.multiproc_dir and not metrics.genai.exemplars
metrics.track_engine_load(lambda: {"engine": (index + 1, 2 * index)})
metrics.track_breakers(lambda: {"up": False, "flaky": index == 1})
metrics.track_ledger(lambda: LedgerBacklog(index, 0, True))
metrics.observe("chat", "fake-model", 200, 0.1)
metrics.in_flight.value += 1
rule = BudgetRule(key="budget:t:acme:tokens:lifetime", unit="tokens", limit=1000)
# Worker 0 reserved last: it saw the least left.
left = 100 if index == 0 else 600
metrics.spend.budgets.record(Principal(tenant="acme", key_id="k"), Reservation("r", 1, None, Plan(budgets=(rule,)), remaining=(left,)))

async def main() -> None:
    metrics.start()
    await asyncio.sleep(0.1)

if how == "start":
    asyncio.run(main())
elif how == "refresh":
    metrics.live.refresh()
if close:
    metrics.close()
"""


def run_worker(directory: Path, *args: str) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", WORKER, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def scrape(directory: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = Metrics(multiproc_dir=str(directory)).render().decode()
    return {(s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_two_workers_live_figures_are_added_up_or_maxed(tmp_path: Path) -> None:
    run_worker(tmp_path, "0", "refresh")
    run_worker(tmp_path, "1", "start")
    samples = scrape(tmp_path)
    # Engines in process are per worker: their load adds up.
    assert value(samples, "sluicegate_engine_running_requests", deployment="engine") == 1 + 2
    assert value(samples, "sluicegate_engine_waiting_requests", deployment="engine") == 0 + 2
    # A breaker open in any worker reads open.
    assert value(samples, "sluicegate_breaker_open", deployment="flaky") == 1
    assert value(samples, "sluicegate_breaker_open", deployment="up") == 0
    # Budgets: the least left, what the latest reservation saw.
    budget = {"tenant": "acme", "scope": "tenant", "key": "", "kind": "tokens", "period": "lifetime"}
    assert value(samples, "sluicegate_budget_remaining", **budget) == 100
    assert value(samples, "sluicegate_budget_limit", **budget) == 1000
    # What was there before: counters and histograms add up, in-flight requests too.
    assert value(samples, "sluicegate_requests_total", route="chat", model="fake-model", status="200") == 2
    assert value(samples, "sluicegate_in_flight_requests") == 2


def test_a_worker_that_stops_cleanly_takes_its_live_figures_with_it(tmp_path: Path) -> None:
    run_worker(tmp_path, "0", "refresh")
    run_worker(tmp_path, "1", "refresh", "close")
    samples = scrape(tmp_path)
    assert value(samples, "sluicegate_engine_running_requests", deployment="engine") == 1
    assert value(samples, "sluicegate_breaker_open", deployment="flaky") == 0
    assert value(samples, "sluicegate_in_flight_requests") == 1
    # Its requests were served: they still count.
    assert value(samples, "sluicegate_requests_total", route="chat", model="fake-model", status="200") == 2


def test_a_deployment_gone_from_a_worker_stops_adding_up(tmp_path: Path) -> None:
    """A reload removed a deployment: its figure is written as zero, not left at its last value."""
    directory = str(tmp_path)
    script = """
from router.metrics import Metrics
load = {"old": (5, 5), "kept": (1, 1)}
metrics = Metrics()
metrics.track_engine_load(lambda: dict(load))
metrics.live.refresh()
del load["old"]
metrics.live.refresh()
"""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    samples = scrape(tmp_path)
    assert value(samples, "sluicegate_engine_running_requests", deployment="old") == 0
    assert value(samples, "sluicegate_engine_running_requests", deployment="kept") == 1


def test_openmetrics_is_answered_with_several_workers_too(tmp_path: Path) -> None:
    run_worker(tmp_path, "0", "refresh")
    body, content_type = Metrics(multiproc_dir=str(tmp_path)).exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n") and b"sluicegate_engine_running_requests" in body


def test_a_worker_still_starting_up_shows_no_figure_yet(tmp_path: Path) -> None:
    run_worker(tmp_path, "0", "refresh")
    run_worker(tmp_path, "1", "made")
    samples = scrape(tmp_path)
    # Not a 0 from the worker that has copied nothing: the store is up, as the other worker saw it.
    assert value(samples, "sluicegate_ledger_store_up") == 1
    assert value(samples, "sluicegate_ledger_pending_rows") == 0
    assert value(samples, "sluicegate_breaker_open", deployment="flaky") == 0
