"""bench.fixed_rate's helpers: a p99 from two readings of a gateway histogram, the histograms read from /metrics, nginx's config."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench.fixed_rate import bucket_p99, cpu_against_wrk, histogram_counts, nginx_config

INF = float("inf")


def test_the_p99_is_the_bound_of_the_bucket_that_holds_it_between_the_readings() -> None:
    before = {0.0001: 10.0, 0.00025: 50.0, 0.0005: 90.0, 0.001: 100.0, INF: 100.0}
    # 1,000 more: 900 under 0.25 ms, 985 under 0.5 ms, 995 under 1 ms, all under +Inf
    after = {0.0001: 10.0, 0.00025: 950.0, 0.0005: 1075.0, 0.001: 1095.0, INF: 1100.0}
    assert bucket_p99(before, after) == "<=1"
    after[0.0005] = 1080.0  # 990 of 1,000 under 0.5 ms
    assert bucket_p99(before, after) == "<=0.5"
    assert bucket_p99(before, before) == "-"  # nothing observed between them
    assert bucket_p99({}, {0.001: 0.0, INF: 100.0}) == ">max"


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_the_nginx_config_is_one_that_nginx_accepts(tmp_path: Path) -> None:
    config = nginx_config(tmp_path, 18080, 18081)
    result = subprocess.run(
        ["nginx", "-t", "-c", str(config), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_histogram_counts_reads_one_family_and_the_series_asked_for() -> None:
    text = "\n".join(
        [
            "# TYPE sluicegate_overhead_seconds histogram",
            'sluicegate_overhead_seconds_bucket{le="0.001",mode="unary"} 7.0',
            'sluicegate_overhead_seconds_bucket{le="+Inf",mode="unary"} 9.0',
            'sluicegate_overhead_seconds_bucket{le="0.001",mode="stream"} 1.0',
            'sluicegate_overhead_seconds_count{mode="unary"} 9.0',
            'sluicegate_event_loop_lag_seconds_bucket{le="0.0005"} 40.0',
            'sluicegate_event_loop_lag_seconds_bucket{le="+Inf"} 41.0',
        ]
    )
    assert histogram_counts(text, "sluicegate_overhead_seconds", 'mode="unary"') == {0.001: 7.0, INF: 9.0}
    assert histogram_counts(text, "sluicegate_event_loop_lag_seconds") == {0.0005: 40.0, INF: 41.0}
    assert histogram_counts(text, "sluicegate_missing_seconds") == {}


def test_the_cpu_at_the_offered_rate_is_put_against_the_cpu_under_wrk() -> None:
    assert cpu_against_wrk([210.0, 215.0, 240.0], 122.0) == "; CPU a request 215 us, 1.76x its 122 us under wrk"
    assert cpu_against_wrk([], 122.0) == ""  # no round measured it
    assert cpu_against_wrk([215.0], float("nan")) == ""  # --rate: the maximum, and so wrk's figure, not measured
