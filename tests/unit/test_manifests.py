"""The shipped manifests parse and refer to metrics the gateway really exports."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from router.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]


def test_keda_queries_use_exported_metrics() -> None:
    metrics = Metrics()
    metrics.track_engine_load(lambda: {"d": (1, 2)})
    exported = metrics.render().decode()
    docs = list(yaml.safe_load_all((ROOT / "k8s/keda/scaledobject.yaml").read_text()))
    queries = [t["metadata"]["query"] for d in docs for t in d["spec"]["triggers"]]
    assert queries
    for query in queries:
        for name in re.findall(r"sluicegate_[a-z_]+", query):
            assert f"\n{name}" in exported or exported.startswith(name), name


def test_deployment_probes_match_routes() -> None:
    docs = list(yaml.safe_load_all((ROOT / "k8s/keda/deployment.yaml").read_text()))
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert docs[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 30
