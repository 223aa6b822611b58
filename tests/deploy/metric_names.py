"""The kpi_* metric names used by the dashboards and alert rules, and how they map to exported families."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS_DIR = REPO_ROOT / "grafana" / "dashboards"
ALERT_RULES = REPO_ROOT / "prometheus" / "alerts.yaml"

# Every metric family the sidecar exports, with its Prometheus type (the deployment issue's list).
CATALOGUE: dict[str, str] = {
    "kpi_backpressure_degradation_level": "gauge",
    "kpi_backpressure_memory_usage_mb": "gauge",
    "kpi_backpressure_queue_size": "gauge",
    "kpi_backpressure_sampling_rate": "gauge",
    "kpi_backpressure_load_percent": "gauge",
    "kpi_backpressure_cpu_percent": "gauge",
    "kpi_backpressure_incoming_rate": "gauge",
    "kpi_backpressure_batch_size": "gauge",
    "kpi_backpressure_upstream_connected": "gauge",
    "kpi_backpressure_queue_max_size": "gauge",
    "kpi_circuit_breaker_open": "gauge",
    "kpi_nats_messages_published": "counter",
    "kpi_streaming_messages_dropped": "counter",
    "kpi_streaming_messages_received": "counter",
    "kpi_nats_publish_latency_seconds": "histogram",
    "kpi_streaming_batches_processed": "counter",
    "kpi_backpressure_level_transitions": "counter",
    "kpi_spool_bytes": "gauge",
    "kpi_spool_messages": "gauge",
    "kpi_spool_oldest_age_seconds": "gauge",
    "kpi_circuit_breaker_transitions": "counter",
    "kpi_sidecar_clients": "gauge",
    "kpi_sidecar_slow_consumers": "counter",
    "kpi_sidecar_flow_paused_clients": "gauge",
    "kpi_sidecar_held_clients": "gauge",
    "kpi_upstream_stalled": "gauge",
    "kpi_sidecar_flow_pauses": "counter",
    "kpi_sidecar_requests_refused": "counter",
    "kpi_upstream_unconfirmed_bytes": "gauge",
    "kpi_upstream_taken_back": "counter",
    "kpi_sidecar_client_pending_bytes": "gauge",
    "kpi_sidecar_upstream_subscriptions": "gauge",
    "kpi_sidecar_subscriptions": "gauge",
    "kpi_sidecar_upstream_read_held": "gauge",
    "kpi_sidecar_upstream_read_holds": "counter",
    "kpi_sidecar_upstream_read_held_seconds": "counter",
    # What the operations alerts read: the maxima in force, critical traffic, the configuration's state.
    "kpi_backpressure_memory_max_mb": "gauge",
    "kpi_spool_max_bytes": "gauge",
    "kpi_backpressure_oldest_critical_age_seconds": "gauge",
    "kpi_streaming_critical_dropped": "counter",
    "kpi_sidecar_config_reloads": "counter",
    "kpi_sidecar_config_reload_successful": "gauge",
    "kpi_sidecar_config_restart_required": "gauge",
    "kpi_sidecar_config_api_overrides": "gauge",
    # Fleet coordination (docs/fleet.md): families always exported, samples only with a `fleet:` section.
    "kpi_fleet_members": "gauge",
    "kpi_fleet_share_rate": "gauge",
    "kpi_fleet_budget_rate": "gauge",
    "kpi_fleet_level": "gauge",
    "kpi_fleet_mode": "gauge",
    "kpi_fleet_kv_available": "gauge",
    "kpi_fleet_puts": "counter",
    "kpi_fleet_control_bytes": "counter",
    # Issue #16: the signals beside the local four.
    "kpi_sidecar_signal_load_percent": "gauge",
    "kpi_sidecar_upstream_rtt_seconds": "gauge",
    "kpi_sidecar_upstream_rtt_baseline_seconds": "gauge",
    "kpi_sidecar_queue_delay_seconds": "gauge",
    "kpi_sidecar_seconds_to_full": "gauge",
    "kpi_sidecar_stream_fill_ratio": "gauge",
    "kpi_sidecar_stream_refusing_new": "gauge",
    "kpi_sidecar_class_level": "gauge",
    "kpi_sidecar_stream_monitor_in_flight": "gauge",
}

# A sample name is its family's name plus one of these suffixes, by family type.
SAMPLE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}
# Types whose single sample carries the family's own name.
PLAIN_TYPES = frozenset({"gauge", "untyped", "unknown", "info", "stateset"})

_KPI_NAME = re.compile(r"(?<![A-Za-z0-9_:])kpi_[A-Za-z0-9_:]*")
# PromQL string literals: a label value such as "kpi_x" is not a metric name.
_STRING_LITERAL = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
# Label lists of aggregations and vector matching: `by (kpi_x)` names a label, not a metric.
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")


def names_in_expr(expr: str) -> set[str]:
    """The kpi_* metric names a PromQL expression selects (string literals and label lists ignored)."""
    return set(_KPI_NAME.findall(_LABEL_LIST.sub(" ", _STRING_LITERAL.sub('""', expr))))


def dashboard_queries(dashboard: Mapping[str, Any]) -> Iterator[str]:
    """Every PromQL text of a dashboard: panel targets, annotations and template variable queries."""

    def walk(node: Any, key: str | None = None) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, k)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item, key)
        elif isinstance(node, str) and key in ("expr", "query", "definition"):
            yield node

    yield from walk(dashboard)


def rule_exprs(rules_file: Path = ALERT_RULES) -> list[str]:
    """The `expr` of every rule in a Prometheus rule file."""
    data = yaml.safe_load(rules_file.read_text())
    return [rule["expr"] for group in data["groups"] for rule in group["rules"]]


def used_metric_names(
    dashboards_dir: Path = DASHBOARDS_DIR, rules_file: Path = ALERT_RULES
) -> dict[str, set[str]]:
    """Each kpi_* sample name the dashboards and alert rules use, with the files that use it."""
    used: dict[str, set[str]] = {}
    sources: list[tuple[str, list[str]]] = [
        (path.name, list(dashboard_queries(json.loads(path.read_text()))))
        for path in sorted(dashboards_dir.glob("*.json"))
    ]
    sources.append((rules_file.name, rule_exprs(rules_file)))
    for source, exprs in sources:
        for expr in exprs:
            for name in names_in_expr(expr):
                used.setdefault(name, set()).add(source)
    return used


def resolve_family(sample_name: str, families: Mapping[str, str]) -> str | None:
    """The family (of `families`: name -> type) that `sample_name` belongs to, or None.

    A suffix is stripped only when the family it leaves has a type that writes that suffix: `x_total` is
    counter `x`, `x_bucket` histogram `x`; a gauge named `x_count` stays `x_count`.
    """
    if families.get(sample_name) in PLAIN_TYPES:
        return sample_name
    for family_type, suffixes in SAMPLE_SUFFIXES.items():
        for suffix in suffixes:
            base = sample_name.removesuffix(suffix)
            if base != sample_name and families.get(base) == family_type:
                return base
    return None


def exported_families(exposition: str) -> dict[str, str]:
    """Family name -> type of a Prometheus text exposition (families without samples included)."""
    return {family.name: family.type for family in text_string_to_metric_families(exposition)}
