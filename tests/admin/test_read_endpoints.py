"""The read endpoints of the admin API against a running sidecar: envelope, seed names, schemas."""

from __future__ import annotations

from typing import Any

from tests.admin.api import call, check_schema, wait_for

P = "/api/backpressure"
SEED_FIELDS = {
    "currentMemoryMB": (int, float),
    "currentQueueSize": int,
    "currentPublishRate": (int, float),
    "currentCpuPercent": (int, float),
    "droppedMessages": int,
    "sampledMessages": int,
    "circuitBreakerOpen": bool,
    "degradationLevel": str,
}
EXTRA_FIELDS = {
    "loadPercent": (int, float),
    "dominantSignal": str,
    "samplingRate": (int, float),
    "batchSize": int,
    "upstreamConnected": bool,
    "receivedMessages": int,
    "forwardedMessages": int,
    "spooledMessages": int,
}


def test_status_has_the_seed_fields_with_their_exact_names(stack: Any) -> None:
    answer = check_schema(call(stack.admin, "GET", f"{P}/status"), f"{P}/status")
    assert answer.status == 200
    assert answer.json["success"] is True and answer.json["timestamp"].endswith("Z")
    data = answer.data
    for name, kind in {**SEED_FIELDS, **EXTRA_FIELDS}.items():
        assert name in data, name
        assert isinstance(data[name], kind), (name, data[name])
    assert data["degradationLevel"] in ("none", "low", "medium", "high", "critical")
    assert data["upstreamConnected"] is True
    # Memory is sampled once a second, from the first tick on.
    wait_for(lambda: call(stack.admin, "GET", f"{P}/status").data["currentMemoryMB"] > 0, timeout=5)
    assert data["receivedMessages"] == (
        data["forwardedMessages"]
        + data["droppedMessages"]
        + data["currentQueueSize"]
        + data["spooledMessages"]
    )


def test_metrics_history_current_and_every_time_range(stack: Any) -> None:
    path = f"{P}/metrics"
    # One sample a second: wait for two.
    wait_for(lambda: len(call(stack.admin, "GET", path).data["history"]) >= 2, timeout=5)
    answer = check_schema(call(stack.admin, "GET", path), path)
    data = answer.data
    assert data["timeRange"] == "5m" and data["stepSeconds"] == 1
    # The seed's troubleshooting one-liner: jq '.data.current.currentQueueSize'
    assert isinstance(data["current"]["currentQueueSize"], int)
    stamps = [point["timestamp"] for point in data["history"]]
    assert stamps == sorted(stamps)
    assert {"currentQueueSize", "currentMemoryMB", "degradationLevel"} <= set(data["history"][-1])
    for time_range, step in (("1h", 10), ("24h", 60)):
        ranged = check_schema(call(stack.admin, "GET", f"{path}?timeRange={time_range}"), path)
        assert ranged.data["stepSeconds"] == step
        assert 1 <= len(ranged.data["history"]) <= 2
    bad = check_schema(call(stack.admin, "GET", f"{path}?timeRange=7d"), path)
    assert bad.status == 400
    assert bad.error["code"] == "VALIDATION_ERROR" and bad.error["details"]["field"] == "timeRange"


def test_health_is_200_with_a_status_and_detailed_health_has_every_component(stack: Any) -> None:
    health = check_schema(call(stack.admin, "GET", f"{P}/health"), f"{P}/health")
    assert health.status == 200 and health.data["status"] in ("healthy", "degraded", "critical")
    detailed = check_schema(call(stack.admin, "GET", f"{P}/health/detailed"), f"{P}/health/detailed")
    components = detailed.data["components"]
    assert set(components) >= {"upstream", "queue", "memory", "cpu", "breakers", "spool"}
    assert components["upstream"]["connected"] is True
    assert components["upstream"]["serverVersion"]
    assert components["queue"]["maxSize"] == 100000
    assert components["memory"]["currentMB"] > 0


def test_ready_on_both_paths(stack: Any) -> None:
    for path in (f"{P}/ready", "/ready"):
        answer = check_schema(call(stack.admin, "GET", path), path)
        assert answer.status == 200 and answer.data == {"ready": True, "upstreamConnected": True}


def test_config_is_the_backpressure_section_plus_policies(stack: Any) -> None:
    answer = check_schema(call(stack.admin, "GET", f"{P}/config"), f"{P}/config")
    data = answer.data
    assert data["maxQueueSize"] == 100000 and data["maxPublishRate"] == 100000
    assert data["enableSampling"] is True and data["policies"] == []


def test_breakers_load_test_and_analytics_start_empty(stack: Any) -> None:
    breakers = check_schema(
        call(stack.admin, "GET", f"{P}/circuit-breaker/status"), f"{P}/circuit-breaker/status"
    )
    assert breakers.data["breakers"] == [] and breakers.data["open"] == 0
    load = check_schema(call(stack.admin, "GET", f"{P}/load-test/status"), f"{P}/load-test/status")
    assert load.data["state"] == "idle" and load.data["running"] is False
    history_path = f"{P}/analytics/degradation-history"
    history = check_schema(call(stack.admin, "GET", history_path), history_path)
    assert history.data["currentLevel"] == "none" and history.data["transitions"] == []
    recs_path = f"{P}/analytics/recommendations"
    recs = check_schema(call(stack.admin, "GET", recs_path), recs_path)
    assert recs.data["recommendations"] == []


def test_unknown_paths_and_methods_answer_in_the_error_envelope(stack: Any) -> None:
    missing = call(stack.admin, "GET", f"{P}/nope")
    assert missing.status == 404 and missing.error["code"] == "NOT_FOUND"
    wrong = call(stack.admin, "DELETE", f"{P}/config")
    assert wrong.status == 405 and wrong.error["code"] == "METHOD_NOT_ALLOWED"
    assert "PUT" in wrong.headers.get("Allow", "")


def test_openapi_document_is_served(stack: Any) -> None:
    answer = call(stack.admin, "GET", f"{P}/openapi.json")
    assert answer.status == 200
    assert answer.json["openapi"].startswith("3.1")
    assert f"{P}/status" in answer.json["paths"]
