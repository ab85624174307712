"""A worker's fast counters and histograms, copied into its multiprocess files (``router.metrics_mirror``).

prometheus_client picks multiprocess mode when it is first imported, so each
side runs in a process of its own with ``PROMETHEUS_MULTIPROC_DIR`` set, as a
worker of ``sluicegate serve --workers N`` does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest, multiprocess

ROOT = Path(__file__).resolve().parents[3]

# The same recording by prometheus_client's own classes ("own") or by fast families and a mirror ("mirror"), with
# flushes between steps; a second registry in the same process stands for a process of the same pid before it.
RECORD = """
import sys
from prometheus_client import CollectorRegistry, Counter, Histogram
from router.metrics_fast import FastCounter, FastHistogram
from router.metrics_mirror import FileMirror, writes_files

assert writes_files()
own = sys.argv[1] == "own"
BUCKETS = (0.1, 1.0, 10.0)

def make(registry):
    if own:
        return (Counter("things_total", "Things.", ("route",), registry=registry),
                Histogram("took_seconds", "Took.", ("route", "code"), buckets=BUCKETS, registry=registry))
    return (FastCounter("things_total", "Things.", ("route",), registry),
            FastHistogram("took_seconds", "Took.", ("route", "code"), BUCKETS, registry))

def flush(mirror):
    if mirror is not None:
        mirror.flush()

for _ in range(2):
    registry = CollectorRegistry()
    things, took = make(registry)
    mirror = None if own else FileMirror(registry)
    things.labels("a").inc()
    things.labels("b").inc(2.5)
    took.labels("a", "200").observe(0.05)
    took.labels("a", "200").observe(1.0)  # on a bound: counted in its bucket
    flush(mirror)
    flush(mirror)  # nothing changed: nothing written twice
    took.labels("a", "200").observe(50.0)  # past the last bound: +Inf
    took.labels("b", "500").observe(0.0)
    things.labels("a").inc(4)
    flush(mirror)
    things.clear()  # made again below: its count goes on from what the file holds
    things.labels("a").inc()
    took.labels("c", "200")  # a child never observed is shown with zeros
    flush(mirror)
"""


def _record(directory: Path, how: str) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", RECORD, how], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def _scrape(directory: Path) -> bytes:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def _lines(text: bytes) -> list[bytes]:
    # The families come in the order of the files found, which is the directory's.
    return sorted(text.splitlines())


def test_the_files_hold_what_prometheus_clients_own_classes_write(tmp_path: Path) -> None:
    own, mirrored = tmp_path / "own", tmp_path / "mirrored"
    own.mkdir()
    mirrored.mkdir()
    _record(own, "own")
    _record(mirrored, "mirror")
    text = _scrape(mirrored)
    assert _lines(text) == _lines(_scrape(own))
    # Both rounds of the same pid add up: 1 + 4 + 1 a round for "a".
    assert b'things_total{route="a"} 12.0' in text
    assert b'took_seconds_bucket{code="200",le="1.0",route="a"} 4.0' in text
    assert b'took_seconds_bucket{code="200",le="+Inf",route="a"} 6.0' in text
    assert b'took_seconds_sum{code="200",route="a"} 102.1' in text
    assert b'took_seconds_count{code="200",route="c"} 0.0' in text


WORKER = """
from router.metrics import Metrics
from router.metrics_fast import FastCounter, FastHistogram

metrics = Metrics()
assert metrics.fast and not metrics.genai.exemplars
assert type(metrics.requests) is FastCounter and type(metrics.latency) is FastHistogram
metrics.observe("chat", "fake-model", 200, 0.1)
print(b'sluicegate_requests_total{model="fake-model",route="chat",status="200"} 1.0' in metrics.render(), flush=True)
metrics.observe("chat", "fake-model", 200, 0.1)
metrics.close()  # a worker stopping: its counts go to the files
"""


def test_a_worker_records_in_memory_and_copies_when_scraped_and_when_it_stops(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", WORKER], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"  # the scraped worker copied its own counts first
    assert b'sluicegate_requests_total{model="fake-model",route="chat",status="200"} 2.0' in _scrape(tmp_path)
