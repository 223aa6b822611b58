"""The metric-name helper on its own, and the dashboards and alert rules checked against the catalogue."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tests.deploy.metric_names import (
    CATALOGUE,
    exported_families,
    names_in_expr,
    resolve_family,
    rule_exprs,
    used_metric_names,
)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("kpi_backpressure_degradation_level >= 4", {"kpi_backpressure_degradation_level"}),
        (
            "histogram_quantile(0.95, sum by (le) "
            '(rate(kpi_nats_publish_latency_seconds_bucket{subject="a"}[5m])))',
            {"kpi_nats_publish_latency_seconds_bucket"},
        ),
        (
            "sum(rate(kpi_streaming_messages_dropped_total[5m]))"
            " / sum(rate(kpi_nats_messages_published_total[5m]))",
            {"kpi_streaming_messages_dropped_total", "kpi_nats_messages_published_total"},
        ),
        # Label values and label names are not metric names.
        ('up{job="kpi_sidecar", subject=~"kpi_payment_.*"}', set()),
        ("sum by (kpi_label) (up)", set()),
        ("sum without(subject, kpi_x) (kpi_spool_bytes)", {"kpi_spool_bytes"}),
        ("a / on (kpi_x) group_left (kpi_y) kpi_spool_bytes", {"kpi_spool_bytes"}),
        ("label_values(kpi_spool_bytes, instance)", {"kpi_spool_bytes"}),
        ("my_kpi_metric + process_cpu_seconds_total", set()),
        ("kpi_spool_bytes/kpi_spool_messages", {"kpi_spool_bytes", "kpi_spool_messages"}),
    ],
)
def test_names_in_expr(expr: str, names: set[str]) -> None:
    assert names_in_expr(expr) == names


FAMILIES = {
    "kpi_a": "gauge",
    "kpi_b": "counter",
    "kpi_c_seconds": "histogram",
    "kpi_d_count": "gauge",
    "kpi_e": "summary",
}


@pytest.mark.parametrize(
    ("sample", "family"),
    [
        ("kpi_a", "kpi_a"),
        ("kpi_b_total", "kpi_b"),
        ("kpi_b", None),  # a counter's samples end in _total
        ("kpi_c_seconds_bucket", "kpi_c_seconds"),
        ("kpi_c_seconds_sum", "kpi_c_seconds"),
        ("kpi_c_seconds_count", "kpi_c_seconds"),
        ("kpi_c_seconds", None),
        ("kpi_d_count", "kpi_d_count"),  # a gauge that merely ends in _count
        ("kpi_d", None),
        ("kpi_e_sum", "kpi_e"),
        ("kpi_e_bucket", None),  # summaries have no buckets
        ("kpi_a_total", None),  # a gauge has no _total sample
        ("kpi_missing", None),
    ],
)
def test_resolve_family(sample: str, family: str | None) -> None:
    assert resolve_family(sample, FAMILIES) == family


def catalogue_registry(skip: str | None = None) -> CollectorRegistry:
    """A registry with every catalogue family, labelled and without samples, as a fresh sidecar has."""
    registry = CollectorRegistry()
    kinds = {"gauge": Gauge, "counter": Counter, "histogram": Histogram}
    for name, kind in CATALOGUE.items():
        if name != skip:
            kinds[kind](name, "doc", ["subject"], registry=registry)
    return registry


def test_exported_families_reads_a_prometheus_client_exposition() -> None:
    families = exported_families(generate_latest(catalogue_registry()).decode())
    assert {name: families[name] for name in CATALOGUE} == CATALOGUE
    for name in used_metric_names():
        assert resolve_family(name, families) is not None, name


def test_a_missing_family_is_reported() -> None:
    families = exported_families(
        generate_latest(catalogue_registry(skip="kpi_nats_publish_latency_seconds")).decode()
    )
    unresolved = {name for name in used_metric_names() if resolve_family(name, families) is None}
    assert unresolved == {
        "kpi_nats_publish_latency_seconds_bucket",
        "kpi_nats_publish_latency_seconds_sum",
        "kpi_nats_publish_latency_seconds_count",
    }


def test_dashboards_and_rules_use_only_catalogue_metrics() -> None:
    used = used_metric_names()
    unknown = {name: sorted(files) for name, files in used.items() if resolve_family(name, CATALOGUE) is None}
    assert not unknown, f"metric names not exported by the sidecar (or with the wrong suffix): {unknown}"


def test_every_catalogue_metric_is_on_a_dashboard() -> None:
    dashboards = {
        resolve_family(name, CATALOGUE)
        for name, files in used_metric_names().items()
        if any(file.endswith(".json") for file in files)
    }
    assert set(CATALOGUE) - dashboards == set()


def test_alert_rules_use_the_seed_metrics_and_the_operations_ones() -> None:
    names = set().union(*(names_in_expr(expr) for expr in rule_exprs()))
    assert names == {
        "kpi_backpressure_degradation_level",
        "kpi_circuit_breaker_open",
        "kpi_streaming_messages_dropped_total",
        "kpi_nats_messages_published_total",
        "kpi_backpressure_queue_size",
        "kpi_backpressure_queue_max_size",
        "kpi_backpressure_memory_usage_mb",
        "kpi_backpressure_memory_max_mb",
        "kpi_backpressure_upstream_connected",
        "kpi_spool_messages",
        "kpi_spool_bytes",
        "kpi_spool_max_bytes",
        "kpi_backpressure_oldest_critical_age_seconds",
        "kpi_streaming_critical_dropped_total",
        "kpi_sidecar_config_reload_successful",
    }
