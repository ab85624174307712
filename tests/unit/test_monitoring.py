"""The shipped Prometheus rules and Grafana dashboard are valid and use only metrics the gateway exports.

`promtool check rules` and `promtool test rules` run on deploy/monitoring/ (skipped only
where promtool is not installed; `.ci/run` installs it). Every metric name in a rule or
a dashboard query must be one that `router.metrics.Metrics()` registers, with labels it
has, so neither can drift from the code.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from router.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "sluicegate-rules.yaml"
RULE_TESTS = sorted((MONITORING / "tests").glob("*.yaml"))
DASHBOARD = MONITORING / "grafana" / "sluicegate.json"

# Labels Prometheus adds at scrape time, and the histogram bucket label.
TARGET_LABELS = {"instance", "job", "le"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}
QUOTED = re.compile(r'"(?:\\.|[^"\\])*"')
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
SELECTOR = re.compile(r"\b(sluicegate_[a-z0-9_]+)\s*\{([^}]*)\}")
LABEL_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


def exported_series() -> dict[str, set[str]]:
    """Series name --> its label names, for everything the gateway registers."""
    metrics = Metrics()
    metrics.track_engine_load(lambda: {"deployment-a": (1, 2)})
    metrics.track_breakers(lambda: {"deployment-a": True})
    series: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for suffix in SUFFIXES[str(value._type)]:
                series[value._name + suffix] = set(value._labelnames)
    # Custom collectors (the engine load figures) show their names and labels when collected.
    for family in metrics.registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    assert "sluicegate_engine_waiting_requests" in series
    assert "sluicegate_requests_total" in series
    return series


def check_expr(expr: str, series: dict[str, set[str]], recorded: set[str]) -> None:
    """Every sluicegate_* name is exported, every label matcher on it is one of its labels,
    and every recording-rule name (with a colon) is defined in the rules file."""
    bare = QUOTED.sub('""', expr)
    for name in IDENT.findall(bare):
        if ":" in name:
            assert name in recorded, f"{name!r} in {expr!r} is not a recording rule in {RULES.name}"
        elif name.startswith("sluicegate"):
            assert name in series, f"{name!r} in {expr!r} is not a metric the gateway exports"
    for name, matchers in SELECTOR.findall(bare):
        for label in LABEL_MATCHER.findall(matchers):
            assert label in series[name] | TARGET_LABELS, f"{name} has no label {label!r} ({expr!r})"


def load_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; .ci/run installs it)")
    return path


def test_promtool_check_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules() -> None:
    assert RULE_TESTS
    result = subprocess.run(
        [promtool(), "test", "rules", *(p.name for p in RULE_TESTS)],
        cwd=MONITORING / "tests", capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


def test_rules_use_exported_metrics() -> None:
    series = exported_series()
    rules = load_rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    for rule in rules:
        check_expr(rule["expr"], series, recorded)
    # A recording rule's name keeps the metric it is built on recognisable.
    for name in recorded:
        assert name.count(":") == 2, name


def test_every_alert_is_documented_and_tested_both_ways() -> None:
    alerts = {rule["alert"]: rule for rule in load_rules() if "alert" in rule}
    assert {"SluicegateAvailabilityBurnFast", "SluicegateTTFTBurnFast", "SluicegateConfigVersionSkew",
            "SluicegateCanaryRolledBack", "SluicegateSoftBudgetExceeded"} <= set(alerts)  # fmt: skip
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        for key in ("summary", "description", "runbook"):
            assert len(rule["annotations"].get(key, "")) > 20, (name, key)
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../" + RULES.name], path
        for group in doc["tests"]:
            for case in group.get("alert_rule_test", []):
                assert case["alertname"] in alerts, (path, case["alertname"])
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    assert firing == set(alerts), f"alerts without a firing test: {set(alerts) - firing}"
    assert silent == set(alerts), f"alerts without a non-firing test: {set(alerts) - silent}"


def test_readme_lists_every_alert() -> None:
    readme = (ROOT / "README.md").read_text()
    for rule in load_rules():
        if "alert" in rule:
            assert f"`{rule['alert']}`" in readme, rule["alert"]


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def test_dashboard_uses_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"model", "deployment", "tenant"} <= set(variables)

    series = exported_series()
    recorded = {rule["record"] for rule in load_rules() if "record" in rule}
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"]["uid"] == "${datasource}", var["name"]
            check_expr(var["definition"], series, recorded)

    exprs = []
    ids = set()
    for panel in dashboard_panels(dashboard):
        assert panel["id"] not in ids, panel["title"]
        ids.add(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            check_expr(target["expr"], series, recorded)
            exprs.append(target["expr"])
    used = {name for expr in exprs for name in IDENT.findall(QUOTED.sub('""', expr)) if name.startswith("sluicegate_")}
    # The panels the dashboard promises.
    for name in (
        "sluicegate_requests_total", "sluicegate_request_duration_seconds_bucket",
        "sluicegate_time_to_first_token_seconds_bucket", "sluicegate_tokens_total", "sluicegate_canary_weight_percent",
        "sluicegate_config_version", "sluicegate_engine_running_requests", "sluicegate_engine_waiting_requests",
        "sluicegate_pii_entities_total", "sluicegate_plugin_hook_seconds_bucket", "sluicegate_plugin_errors_total",
    ):  # fmt: skip
        assert name in used, name


def test_drift_check_catches_unknown_names() -> None:
    series = exported_series()
    with pytest.raises(AssertionError):
        check_expr("rate(sluicegate_breaker_open_total[5m])", series, set())
    with pytest.raises(AssertionError):
        check_expr('rate(sluicegate_requests_total{tenant="a"}[5m])', series, set())
    with pytest.raises(AssertionError):
        check_expr("sluicegate:nothing:ratio_rate5m > 1", series, set())
    check_expr('sum by (model) (rate(sluicegate_requests_total{status=~"5..",instance="x"}[5m]))', series, set())
