"""The shipped Prometheus rules and Grafana dashboard are valid and use only metrics the gateway exports.

`promtool check rules` and `promtool test rules` run on deploy/monitoring/ (skipped only
where promtool is not installed; `.ci/run` installs it). Every metric name in a rule or
a dashboard query (`sluicegate_*`, and the OpenTelemetry GenAI `gen_ai_*`) must be one
that `router.metrics.Metrics()` registers, with labels it has, so neither can drift from
the code; and the README lists every one of them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from budgets.ledger import LedgerBacklog
from router.cache_step import CacheMetrics
from router.guardrail_step import GuardrailStep
from router.metrics import Metrics
from router.semantic_cache import SemanticMetrics
from router.tenant_records import TenantStore

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
SELECTOR = re.compile(r"\b((?:sluicegate|gen_ai)_[a-z0-9_]+)\s*\{([^}]*)\}")
EXPORTED_PREFIXES = ("sluicegate", "gen_ai_")
LABEL_LISTS = re.compile(r"\{[^}]*\}|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
LABEL_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


def exported_series() -> dict[str, set[str]]:
    """Series name --> its label names, for everything the gateway registers."""
    metrics = Metrics()
    metrics.track_engine_load(lambda: {"deployment-a": (1, 2)})
    metrics.track_breakers(lambda: {"deployment-a": True})
    metrics.track_queues(list)
    metrics.track_ledger(lambda: LedgerBacklog(pending_rows=0, spool_bytes=0, healthy=True))
    # The response cache's and the guardrails' families, registered by their steps on the same registry.
    CacheMetrics(metrics.registry)
    SemanticMetrics(metrics.registry)
    GuardrailStep(metrics.registry, cast(TenantStore, None))
    series: dict[str, set[str]] = {}
    for collector in metrics.registry._collector_to_names:
        if isinstance(collector, MetricWrapperBase):
            for suffix in SUFFIXES[str(collector._type)]:
                series[collector._name + suffix] = set(collector._labelnames)
    # Figures read from live state (engine load, breakers, queues, ledger, budgets) name their labels.
    for figure in metrics.live.figures:
        series[figure.name] = set(figure.labelnames)
    assert "sluicegate_engine_waiting_requests" in series
    assert "sluicegate_requests_total" in series
    assert "gen_ai_client_token_usage_bucket" in series
    return series


def check_expr(expr: str, series: dict[str, set[str]], recorded: set[str]) -> None:
    """Every sluicegate_* name is exported, every label matcher on it is one of its labels,
    and every recording-rule name (with a colon) is defined in the rules file."""
    bare = QUOTED.sub('""', expr)
    # Metric names only: label names (in selectors and grouping clauses) may start with gen_ai_ too.
    for name in IDENT.findall(LABEL_LISTS.sub("", bare)):
        if ":" in name:
            assert name in recorded, f"{name!r} in {expr!r} is not a recording rule in {RULES.name}"
        elif name.startswith(EXPORTED_PREFIXES):
            assert name in series, f"{name!r} in {expr!r} is not a metric the gateway exports"
    for name, matchers in SELECTOR.findall(bare):
        for label in LABEL_MATCHER.findall(matchers):
            assert label in series[name] | TARGET_LABELS, f"{name} has no label {label!r} ({expr!r})"


def metric_names(expr: str) -> set[str]:
    return {name for name in IDENT.findall(LABEL_LISTS.sub("", QUOTED.sub('""', expr))) if name.startswith(EXPORTED_PREFIXES)}


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
            "SluicegateCanaryRolledBack", "SluicegateSoftBudgetExceeded", "SluicegateBudget80Percent",
            "SluicegateBudget90Percent", "SluicegateBudgetSpent", "SluicegateLedgerStoreDown",
            "SluicegateLedgerSpoolGrowing"} <= set(alerts)  # fmt: skip
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


def test_readme_lists_every_metric() -> None:
    """The metrics table names each family the gateway exports (a histogram by its base name)."""
    readme = (ROOT / "README.md").read_text()
    families = {re.sub(r"_(bucket|count|sum|created)$", "", name) for name in exported_series() if not name.endswith("_created")}
    missing = sorted(name for name in families if f"`{name}`" not in readme)
    assert not missing, f"README's metrics table lacks {missing}"


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
    used = {name for expr in exprs for name in metric_names(expr)}
    # A recording rule a panel uses counts as the metrics it is built on.
    for rule in load_rules():
        if "record" in rule and any(rule["record"] in expr for expr in exprs):
            used |= metric_names(rule["expr"])
    # The panels the dashboard promises.
    for name in (
        "sluicegate_requests_total", "sluicegate_request_duration_seconds_bucket",
        "sluicegate_time_to_first_token_seconds_bucket", "sluicegate_tokens_total", "sluicegate_canary_weight_percent",
        "sluicegate_config_version", "sluicegate_engine_running_requests", "sluicegate_engine_waiting_requests",
        "sluicegate_pii_entities_total", "sluicegate_plugin_hook_seconds_bucket", "sluicegate_plugin_errors_total",
        "sluicegate_cost_usd_total", "sluicegate_budget_remaining", "sluicegate_budget_limit", "sluicegate_rejections_total",
        "sluicegate_queue_depth", "sluicegate_queue_wait_seconds_bucket", "sluicegate_ledger_spool_bytes",
        "sluicegate_ledger_pending_rows", "sluicegate_ledger_store_up", "gen_ai_client_token_usage_sum",
        "gen_ai_client_operation_duration_seconds_bucket", "gen_ai_server_time_to_first_token_seconds_bucket",
        "gen_ai_server_time_per_output_token_seconds_bucket",
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
    with pytest.raises(AssertionError):
        check_expr("rate(gen_ai_client_token_usage_total[5m])", series, set())
    with pytest.raises(AssertionError):
        check_expr('rate(gen_ai_client_token_usage_sum{model="a"}[5m])', series, set())
    check_expr('rate(gen_ai_client_token_usage_sum{gen_ai_token_type="input"}[5m])', series, set())
