"""`sluicegate serve` with two workers: whichever answers /metrics shows what both did and hold.

Requests each go on a new connection, so both workers serve some; every scrape,
again on a new connection, must add them all up and show the figures read from
live state (breakers, engine load), which a per-worker collector would not.
Each worker copies its counts into the shared files every second
(``router.metrics_mirror``), and the scraped one just before it renders: a
scrape may lag the other worker by up to a second, never more, never over.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from router.metrics_live import REFRESH_S
from tests.e2e.conftest import GatewayFactory

REQUESTS = 12


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def test_two_workers_are_one_metrics_page(launch_gateway: GatewayFactory, api_key: str) -> None:
    gateway = launch_gateway(workers=2)
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}
    for _ in range(REQUESTS):
        reply = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {api_key}"}, timeout=20)
        assert reply.status_code == 200, reply.text
    served = {
        "gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai",
        "gen_ai_request_model": "fake-model", "gen_ai_response_model": "fake-normal", "error_type": "",
    }  # fmt: skip
    requests = {"route": "chat", "model": "fake-model", "status": "200"}
    deadline = time.monotonic() + 3 * REFRESH_S
    while True:  # until the other worker's next copy
        # No series yet when the scraped worker served none and the other has not copied its counts.
        page = _samples(httpx.get(gateway.url + "/metrics", timeout=10).text)
        counted = page.get(("sluicegate_requests_total", frozenset(requests.items())), 0.0)
        assert counted <= REQUESTS
        if counted == REQUESTS or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for _ in range(6):
        reply = httpx.get(gateway.url + "/metrics", timeout=10)
        assert reply.status_code == 200
        samples = _samples(reply.text)
        assert samples[("sluicegate_requests_total", frozenset(requests.items()))] == REQUESTS
        assert samples[("gen_ai_client_operation_duration_seconds_count", frozenset(served.items()))] == REQUESTS
        # Read from live state in each worker, yet on every worker's page.
        assert samples[("sluicegate_breaker_open", frozenset({"deployment": "fake"}.items()))] == 0
        assert ("sluicegate_engine_running_requests", frozenset({"deployment": "fake"}.items())) in samples
        assert samples[("sluicegate_ledger_store_up", frozenset())] == 1
    # OpenMetrics on request; prometheus_client keeps no exemplars with several workers.
    reply = httpx.get(gateway.url + "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}, timeout=10)
    assert reply.headers["content-type"].startswith("application/openmetrics-text")
    assert reply.text.endswith("# EOF\n") and "trace_id" not in reply.text


def test_workers_that_stop_leave_every_count_in_the_files(
    launch_gateway: GatewayFactory, api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM right after the last answer: each worker copies what it recorded before it exits."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # the gateway's, instead of a directory of its own
    gateway = launch_gateway(workers=2)
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}
    for _ in range(REQUESTS):
        reply = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {api_key}"}, timeout=20)
        assert reply.status_code == 200, reply.text
    assert gateway.stop() == 0
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    requests = {"route": "chat", "model": "fake-model", "status": "200"}
    assert registry.get_sample_value("sluicegate_requests_total", requests) == REQUESTS
