"""GET /metrics: every seed and catalogue family, parsed by prometheus_client, with bounded subject labels."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.admin.metrics import SidecarCollector, SubjectLabels, new_registry
from proxy.config.runtime import ConfigCollector, RuntimeConfig
from proxy.config.schema import LoadedConfig, build_config
from proxy.fleet.view import FleetCollector
from proxy.sidecar import Sidecar
from tests.admin.api import call, wait_for
from tests.deploy.metric_names import CATALOGUE

SEED_METRICS = {
    "kpi_backpressure_degradation_level": "gauge",
    "kpi_backpressure_memory_usage_mb": "gauge",
    "kpi_backpressure_queue_size": "gauge",
    "kpi_backpressure_sampling_rate": "gauge",
    "kpi_circuit_breaker_open": "gauge",
    "kpi_nats_messages_published": "counter",
    "kpi_streaming_messages_dropped": "counter",
    "kpi_nats_publish_latency_seconds": "histogram",
    "kpi_streaming_batches_processed": "counter",
}
LABELS = {
    "kpi_circuit_breaker_open": {"subject"},
    "kpi_nats_messages_published": {"subject", "status", "priority", "role"},
    "kpi_streaming_messages_dropped": {"reason", "subject", "role"},
    "kpi_streaming_messages_received": {"priority"},
    "kpi_nats_publish_latency_seconds": {"subject", "le"},
    "kpi_streaming_batches_processed": {"subject", "size"},
    "kpi_backpressure_level_transitions": {"from", "to"},
    "kpi_circuit_breaker_transitions": {"subject", "to"},
}


def families(stack: Any) -> dict[str, Any]:
    answer = call(stack.admin, "GET", "/metrics")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(answer.body.decode())}


def samples(family: Any, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples if s.name == name}


def test_a_fresh_sidecar_exports_every_family_with_help_and_type(stack_factory: Any) -> None:
    fresh = stack_factory()
    exported = families(fresh)
    for name, kind in {**SEED_METRICS, **CATALOGUE}.items():
        assert name in exported, name
        assert exported[name].type == kind, (name, exported[name].type)
        assert exported[name].documentation, name
    # Labelled families are there before their first sample.
    assert exported["kpi_circuit_breaker_open"].samples == []
    assert exported["kpi_backpressure_level_transitions"].samples == []
    assert "process_cpu_seconds" in exported
    assert exported["kpi_backpressure_upstream_connected"].samples[0].value == 1.0
    assert exported["kpi_backpressure_queue_max_size"].samples[0].value == 100000.0


def test_counters_follow_the_traffic(stack_factory: Any) -> None:
    # Batch size 2 at level none: messages wait for a pair (or 20 ms) and go out as small batches.
    stack = stack_factory({"backpressure": {"batchSizeMultiplier": 2}})
    ingest = stack.sidecar.http_url
    for _ in range(10):
        assert (
            call(ingest, "POST", "/publish/kpi.metrics.a", raw=b"a", headers={"KPI-Priority": "high"}).status
            == 202
        )
    for _ in range(4):
        call(ingest, "POST", "/publish/kpi.metrics.b", raw=b"b")

    async def through_nats() -> None:
        nc = await nats.connect(stack.sidecar.nats_url)
        for _ in range(6):
            await nc.publish("kpi.metrics.c", b"c", headers={"KPI-Priority": "low"})
        await nc.flush()
        await nc.close()

    asyncio.run(through_nats())
    wait_for(lambda: call(stack.admin, "GET", "/api/backpressure/status").data["currentQueueSize"] == 0)
    exported = families(stack)
    for name, labels in LABELS.items():
        for sample in exported[name].samples:
            expected = labels if sample.name.endswith("_bucket") else labels - {"le"}
            assert set(sample.labels) == expected, (name, sample.labels)
    published = samples(exported["kpi_nats_messages_published"], "kpi_nats_messages_published_total")
    data = ("role", "data")
    assert published[(("priority", "high"), data, ("status", "success"), ("subject", "kpi.metrics.a"))] == 10
    assert published[(("priority", "medium"), data, ("status", "success"), ("subject", "kpi.metrics.b"))] == 4
    assert published[(("priority", "low"), data, ("status", "success"), ("subject", "kpi.metrics.c"))] == 6
    received = samples(exported["kpi_streaming_messages_received"], "kpi_streaming_messages_received_total")
    assert sum(received.values()) == 20
    latency = exported["kpi_nats_publish_latency_seconds"]
    counts = samples(latency, "kpi_nats_publish_latency_seconds_count")
    assert counts[(("subject", "kpi.metrics.a"),)] == 10
    buckets = [
        s for s in latency.samples if s.name.endswith("_bucket") and s.labels["subject"] == "kpi.metrics.a"
    ]
    values = [s.value for s in buckets]
    assert values == sorted(values) and buckets[-1].labels["le"] == "+Inf" and values[-1] == 10
    batches = samples(exported["kpi_streaming_batches_processed"], "kpi_streaming_batches_processed_total")
    assert any(dict(k)["size"] == "small" for k in batches), batches
    assert exported["kpi_backpressure_batch_size"].samples[0].value == 2.0


def test_subject_labels_are_bounded_by_max_subjects(stack_factory: Any) -> None:
    stack = stack_factory({"metrics": {"maxSubjects": 3}})
    for i in range(8):
        call(stack.sidecar.http_url, "POST", f"/publish/kpi.many.s{i}", raw=b"x")
    for i in range(5):
        call(
            stack.admin,
            "POST",
            "/api/backpressure/circuit-breaker",
            {"subject": f"kpi.brk.{i}", "action": "open"},
        )
    exported = families(stack)
    published = samples(exported["kpi_nats_messages_published"], "kpi_nats_messages_published_total")
    subjects = {dict(k)["subject"] for k in published}
    assert subjects == {"kpi.many.s0", "kpi.many.s1", "kpi.many.s2", "_other"}
    assert (
        published[(("priority", "medium"), ("role", "data"), ("status", "success"), ("subject", "_other"))]
        == 5
    )
    breakers = samples(exported["kpi_circuit_breaker_open"], "kpi_circuit_breaker_open")
    assert {dict(k)["subject"] for k in breakers} == {"_other"} and set(breakers.values()) == {1.0}


async def test_the_collector_works_with_a_test_registry() -> None:
    sidecar = Sidecar(build_config({"spool": {"path": None}}, env={}))
    registry = CollectorRegistry()
    collector = SidecarCollector(sidecar)
    registry.register(collector)
    names = {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}
    # The configuration's and the fleet's families come from their own collectors (proxy/config/runtime.py,
    # proxy/fleet/view.py).
    own = {name for name in CATALOGUE if name.startswith(("kpi_sidecar_config_", "kpi_fleet_"))}
    assert set(CATALOGUE) - own <= names
    registry.register(ConfigCollector(RuntimeConfig(sidecar, LoadedConfig(sidecar.config))))
    registry.register(FleetCollector(sidecar))
    names = {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert set(CATALOGUE) <= names
    with pytest.raises(ValueError, match="Duplicated"):
        registry.register(SidecarCollector(sidecar))
    collector.observe_tick(sidecar.loop.time())
    assert "process_cpu_seconds_total" in generate_latest(new_registry()).decode()


def test_subject_labels_keep_engine_labels_and_fold_the_rest() -> None:
    labels = SubjectLabels(2)
    assert labels.label("a", {"a"}) == "a"
    assert labels.label("b", {"a"}) == "b"
    assert labels.label("c", {"a"}) == "_other"
    assert labels.label("b", {"a", "x"}) == "b"
