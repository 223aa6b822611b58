"""Alert rules: promtool checks and unit tests, the seed's five alerts and the operations alerts, the
PrometheusRule generated from them."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.metric_names import ALERT_RULES, DASHBOARDS_DIR, REPO_ROOT, dashboard_queries

ALERTS_TEST = REPO_ROOT / "prometheus" / "alerts_test.yaml"
PROMETHEUS_RULE = REPO_ROOT / "k8s" / "base" / "prometheusrule.yaml"

# The seed's "Alertes Recommandées": name -> (expr, for, severity). HighMessageDropRate keeps the seed's
# ratio and threshold but sums each side first (see test_high_drop_rate_keeps_the_seed_ratio).
SEED_ALERTS: dict[str, tuple[str | None, str, str]] = {
    "BackpressureCritical": ("kpi_backpressure_degradation_level >= 4", "1m", "critical"),
    "CircuitBreakerOpen": ("kpi_circuit_breaker_open == 1", "2m", "critical"),
    "HighMessageDropRate": (None, "5m", "critical"),
    # The seed's absolute 8000 and 800 MB, as 80 % of the maxima in force.
    "BackpressureQueueHigh": (
        "kpi_backpressure_queue_size / kpi_backpressure_queue_max_size > 0.8",
        "3m",
        "warning",
    ),
    "BackpressureMemoryHigh": (
        "kpi_backpressure_memory_usage_mb / kpi_backpressure_memory_max_mb > 0.8",
        "5m",
        "warning",
    ),
}
# The failures that page people: name -> (for, severity).
OPERATIONS_ALERTS: dict[str, tuple[str | None, str]] = {
    "KpiSidecarUpstreamDisconnected": ("1m", "critical"),
    "KpiSidecarSpoolGrowing": ("5m", "warning"),
    "KpiSidecarSpoolNearlyFull": ("2m", "critical"),
    "KpiSidecarCriticalMessagesDelayed": ("1m", "critical"),
    "KpiSidecarCriticalMessagesDropped": (None, "critical"),
    "KpiSidecarDown": ("2m", "critical"),
    "KpiSidecarAbsent": ("5m", "warning"),
    "KpiSidecarConfigReloadFailed": ("5m", "warning"),
}
ALL_ALERTS = [*SEED_ALERTS, *OPERATIONS_ALERTS]


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=cwd, check=False)


def alert_rules() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(ALERT_RULES.read_text())
    return {rule["alert"]: rule for group in data["groups"] for rule in group["rules"]}


def test_promtool_check_rules(promtool: str) -> None:
    result = run([promtool, "check", "rules", str(ALERT_RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALL_ALERTS)} rules found" in result.stdout


def test_promtool_test_rules(promtool: str) -> None:
    result = run([promtool, "test", "rules", ALERTS_TEST.name], cwd=ALERTS_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_show_each_alert_firing_and_not_firing() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == set(ALL_ALERTS)
    assert quiet == set(ALL_ALERTS)


def test_the_seed_alerts_with_their_thresholds_durations_and_severities() -> None:
    rules = alert_rules()
    assert list(rules) == ALL_ALERTS
    for name, (expr, duration, severity) in SEED_ALERTS.items():
        rule = rules[name]
        if expr is not None:
            assert rule["expr"] == expr, name
        assert rule["for"] == duration, name
        assert rule["labels"]["severity"] == severity, name
    for name, (duration, severity) in OPERATIONS_ALERTS.items():
        assert rules[name].get("for") == duration, name
        assert rules[name]["labels"]["severity"] == severity, name
    for name, rule in rules.items():
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        # English annotations (the seed's are French).
        assert (annotations["summary"] + annotations["description"]).isascii(), name
        assert annotations["runbook"] == f"docs/runbook.md#{name.lower()}"


def test_no_absolute_queue_or_memory_threshold() -> None:
    # Fractions of the maxima in force: the same rule fits every preset.
    for name in ("BackpressureQueueHigh", "BackpressureMemoryHigh"):
        expr = alert_rules()[name]["expr"]
        assert "_max_" in expr and expr.endswith("> 0.8"), expr


def test_high_drop_rate_keeps_the_seed_ratio() -> None:
    expr = " ".join(alert_rules()["HighMessageDropRate"]["expr"].split())
    numerator, _, denominator = expr.partition(" / ")
    assert "rate(kpi_streaming_messages_dropped_total[5m])" in numerator
    assert "rate(kpi_nats_messages_published_total[5m])" in denominator
    assert denominator.endswith("> 0.1")
    # The two counters have different labels: each side is aggregated over its own before dividing.
    assert "without (reason, subject, role)" in numerator
    assert "without (subject, status, priority, role)" in denominator


def test_runbook_has_a_section_per_alert() -> None:
    runbook = (REPO_ROOT / "docs" / "runbook.md").read_text()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in runbook.splitlines()
        if line.startswith("#")
    }
    for name in ALL_ALERTS:
        assert name.lower() in headings, f"docs/runbook.md has no heading for #{name.lower()}"


def test_prometheusrule_is_generated_from_the_alerts_file() -> None:
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERT_RULES.read_text())["groups"]
    # Byte for byte what the generator writes now (`make rules` after editing prometheus/alerts.yaml).
    result = run([sys.executable, str(REPO_ROOT / "prometheus" / "render_prometheusrule.py"), "--check"])
    assert result.returncode == 0, result.stderr


def test_the_generator_writes_what_it_reads(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "render", REPO_ROOT / "prometheus" / "render_prometheusrule.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    changed = ALERT_RULES.read_text().replace("> 0.8", "> 0.9")
    rendered = yaml.safe_load(module.render(changed))
    assert rendered["spec"]["groups"] == yaml.safe_load(changed)["groups"]
    assert rendered["spec"]["groups"] != yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]["groups"]


def promql_substituted(query: str) -> str:
    """A dashboard query with Grafana's variables replaced, so that promtool can parse it."""
    for variable, value in {
        "$__rate_interval": "1m",
        "$__interval": "1m",
        "$__range": "1h",
        "$instance": ".*",
        "$subject": ".*",
    }.items():
        query = query.replace(variable, value)
    return query


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    rules = []
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        for query in dashboard_queries(json.loads(path.read_text())):
            if query == "prometheus":  # the datasource variable's plugin type
                continue
            expr = promql_substituted(query)
            # Template variable queries are label_values(metric, label): check the selector.
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", expr)
            rules.append(
                {
                    "record": f"dashboard:{path.stem.replace('-', '_')}:{len(rules)}",
                    "expr": match[1] if match else expr,
                }
            )
    assert len(rules) > 40
    rule_file = tmp_path / "dashboard-queries.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run([promtool, "check", "rules", str(rule_file)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_prometheus_config_loads_the_rules(promtool: str, tmp_path: Path) -> None:
    # compose.yaml mounts both files side by side in /etc/prometheus.
    shutil.copy(REPO_ROOT / "docker" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(ALERT_RULES, tmp_path / "alerts.yaml")
    result = run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALL_ALERTS)} rules found" in result.stdout


@pytest.mark.parametrize("alert", ALL_ALERTS)
def test_alert_annotations_render_in_unit_tests(alert: str) -> None:
    # Each firing expectation pins the rendered summary and description (templates included).
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    rendered = [
        expected["exp_annotations"]
        for case in tests
        for check in case["alert_rule_test"]
        if check["alertname"] == alert
        for expected in check.get("exp_alerts") or []
    ]
    assert rendered and all({"summary", "description"} <= set(a) for a in rendered)
    assert all("{{" not in a["description"] for a in rendered)
