"""The locust load test runs headless against a real gateway and finishes with no failures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_locustfile_runs_clean(gateway, api_key: str, tmp_path: Path) -> None:
    locust = shutil.which("locust")
    if locust is None:
        pytest.skip("locust is not installed (extra `dev`)")
    env = {**os.environ, "SLUICEGATE_KEY": api_key, "SLUICEGATE_MODEL": "fake-model", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [locust, "-f", str(ROOT / "bench" / "locustfile.py"), "--headless", "-u", "4", "-r", "4", "-t", "3s",
         "--host", gateway.url, "--json", "--only-summary"],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path,
    )
    stats = {entry["name"]: entry for entry in json.loads(run.stdout)}
    assert stats["/v1/chat/completions"]["num_requests"] > 0
    assert stats["/v1/chat/completions (stream)"]["num_requests"] > 0
    assert all(entry["num_failures"] == 0 for entry in stats.values()), run.stderr[-2000:]
