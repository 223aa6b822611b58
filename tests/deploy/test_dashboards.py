"""Grafana dashboards: importable JSON with a Prometheus datasource variable and the seed's panels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.metric_names import DASHBOARDS_DIR, REPO_ROOT, names_in_expr

OVERVIEW = DASHBOARDS_DIR / "backpressure-overview.json"
DEEP_DIVE = DASHBOARDS_DIR / "backpressure-deep-dive.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    (found,) = [p for p in panels(dashboard) if p["title"] == title]
    return found


def metrics(panel: dict[str, Any]) -> set[str]:
    return set().union(*(names_in_expr(t["expr"]) for t in panel["targets"]))


def row_panels(dashboard: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Row title -> the panels below it (rows are expanded: their panels follow them)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] | None = None
    for item in dashboard["panels"]:
        if item["type"] == "row":
            current = rows.setdefault(item["title"], list(item.get("panels", [])))
        elif current is not None:
            current.append(item)
    return rows


@pytest.mark.parametrize("path", [OVERVIEW, DEEP_DIVE], ids=lambda p: p.name)
def test_importable_dashboard_with_a_prometheus_datasource_variable(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert "id" not in dashboard or dashboard["id"] is None
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for item in panels(dashboard):
        if item["type"] == "row":
            continue
        assert item["datasource"] == DATASOURCE, item["title"]
        assert item["targets"], item["title"]
        for target in item["targets"]:
            assert target["datasource"] == DATASOURCE, item["title"]
            assert target["expr"].strip(), item["title"]
    ids = [item["id"] for item in panels(dashboard)]
    assert len(ids) == len(set(ids))


def test_dashboards_are_distinct() -> None:
    overview, deep = load(OVERVIEW), load(DEEP_DIVE)
    assert overview["title"] == "Backpressure Overview"
    assert deep["title"] == "Backpressure Deep Dive"
    assert overview["uid"] != deep["uid"]


def test_panels_do_not_overlap() -> None:
    for path in (OVERVIEW, DEEP_DIVE):
        taken: set[tuple[int, int]] = set()
        for item in load(path)["panels"]:
            grid = item["gridPos"]
            assert grid["x"] + grid["w"] <= 24, (path.name, item["title"])
            cells = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not cells & taken, (path.name, item["title"])
            taken |= cells


def test_overview_status_stat_thresholds() -> None:
    status = panel(load(OVERVIEW), "Backpressure Status")
    assert status["type"] == "stat"
    assert metrics(status) == {"kpi_backpressure_degradation_level"}
    steps = status["fieldConfig"]["defaults"]["thresholds"]["steps"]
    # Seed: 0 green, 2 yellow, 4 red (the first step's value is null: "from minus infinity").
    assert [(s["value"], s["color"]) for s in steps] == [(None, "green"), (2, "yellow"), (4, "red")]


def test_overview_seed_panels() -> None:
    overview = load(OVERVIEW)
    system = panel(overview, "System Metrics")
    assert system["type"] == "timeseries"
    assert {
        "kpi_backpressure_memory_usage_mb",
        "kpi_backpressure_queue_size",
        "kpi_backpressure_cpu_percent",
    } <= metrics(system)
    # The seed's node_cpu_seconds_total is replaced by the sidecar's own CPU gauge; the panel says so.
    assert "node_cpu_seconds_total" in system["description"]
    rates = panel(overview, "Message Rates")
    assert rates["type"] == "timeseries"
    assert {"kpi_nats_messages_published_total", "kpi_streaming_messages_dropped_total"} <= metrics(rates)
    assert all("rate(" in t["expr"] for t in rates["targets"])
    breakers = panel(overview, "Circuit Breakers")
    assert breakers["type"] == "stat"
    assert (
        breakers["targets"][0]["expr"].replace(" ", "").startswith("sumby(subject)(kpi_circuit_breaker_open")
    )
    latency = panel(overview, "Publish Latency Distribution")
    assert latency["type"] == "heatmap"
    assert metrics(latency) == {"kpi_nats_publish_latency_seconds_bucket"}
    assert latency["targets"][0]["format"] == "heatmap"
    assert latency["options"]["calculate"] is False


def test_deep_dive_sections() -> None:
    deep = load(DEEP_DIVE)
    rows = row_panels(deep)
    assert list(rows) == [
        "System Resources",
        "Message Flow",
        "Backpressure Actions",
        "Recovery",
        "History",
        "Operations",
        "Fleet",
        "Signals",
    ]
    assert all(rows.values())
    resources = set().union(*(metrics(p) for p in rows["System Resources"]))
    assert {
        "kpi_backpressure_cpu_percent",
        "kpi_backpressure_memory_usage_mb",
        "kpi_spool_bytes",
    } <= resources
    # Message flow per subject: rates, latencies and errors grouped by subject, filtered by $subject.
    flow = rows["Message Flow"]
    per_subject = [
        p for p in flow if any("by (subject" in t["expr"] and "$subject" in t["expr"] for t in p["targets"])
    ]
    assert {p["title"] for p in per_subject} >= {
        "Published Rate by Subject",
        "Dropped Rate by Subject",
        "Publish Errors by Subject",
        "Publish Latency by Subject",
    }
    actions = {p["title"]: p for p in rows["Backpressure Actions"]}
    assert metrics(actions["Sampling Rate"]) == {"kpi_backpressure_sampling_rate"}
    assert metrics(actions["Batch Size"]) == {"kpi_backpressure_batch_size"}
    recovery = set().union(*(metrics(p) for p in rows["Recovery"]))
    assert {"kpi_backpressure_level_transitions_total", "kpi_circuit_breaker_transitions_total"} <= recovery
    assert {"kpi_backpressure_degradation_level"} <= set().union(*(metrics(p) for p in rows["History"]))
    variables = {v["name"]: v for v in deep["templating"]["list"]}
    assert variables["subject"]["includeAll"] and variables["subject"]["multi"]
    # What the operations alerts watch, where the on-call engineer looks.
    operations = {p["title"]: metrics(p) for p in rows["Operations"]}
    assert {"kpi_backpressure_queue_max_size", "kpi_backpressure_memory_max_mb", "kpi_spool_max_bytes"} <= (
        operations["Fill of Configured Maxima"]
    )
    assert operations["Oldest Critical Message Age"] == {"kpi_backpressure_oldest_critical_age_seconds"}
    assert operations["Critical Messages Dropped"] == {"kpi_streaming_critical_dropped_total"}
    assert "kpi_sidecar_config_reload_successful" in operations["Configuration Reloads"]
    fleet = {p["title"]: metrics(p) for p in rows["Fleet"]}
    assert fleet["Fleet Budget and Shares"] == {"kpi_fleet_budget_rate", "kpi_fleet_share_rate"}
    assert fleet["Fleet Members and Level"] == {"kpi_fleet_members", "kpi_fleet_level"}
    signals = set().union(*(metrics(p) for p in rows["Signals"]))
    assert {
        "kpi_sidecar_signal_load_percent",
        "kpi_sidecar_upstream_rtt_seconds",
        "kpi_sidecar_queue_delay_seconds",
        "kpi_sidecar_seconds_to_full",
        "kpi_sidecar_stream_fill_ratio",
    } <= signals
    incidents = panel(deep, "Incidents")["targets"][0]["expr"]
    assert "KpiSidecar.*" in incidents and "BackpressureCritical" in incidents


def test_provisioning_files() -> None:
    provisioning = REPO_ROOT / "grafana" / "provisioning"
    (datasources_file,) = (provisioning / "datasources").glob("*.yaml")
    datasources = yaml.safe_load(datasources_file.read_text())
    assert datasources["apiVersion"] == 1
    (datasource,) = datasources["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    (dashboards_file,) = (provisioning / "dashboards").glob("*.yaml")
    providers = yaml.safe_load(dashboards_file.read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
