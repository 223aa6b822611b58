"""Circuit breakers by hand, queue actions, degradation history and recommendations, end to end."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import nats
import pytest

from tests.admin.api import call, check_schema, wait_for
from tests.conftest import settle
from tests.deploy.metric_names import exported_families

P = "/api/backpressure"
BREAKER = f"{P}/circuit-breaker"


def metric_value(stack: Any, name: str, labels: dict[str, str]) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    text = call(stack.admin, "GET", "/metrics").body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_open_close_reset_a_breaker_by_hand(stack: Any) -> None:
    subject = "kpi.orders.created"
    opened = check_schema(
        call(stack.admin, "POST", BREAKER, {"subject": subject, "action": "open"}), BREAKER, "POST"
    )
    assert opened.status == 200
    assert opened.data["changed"] is True and opened.data["state"] == "open"
    assert opened.data["breaker"]["reason"] == "manual" and opened.data["breaker"]["openedAt"].endswith("Z")
    status = check_schema(call(stack.admin, "GET", f"{BREAKER}/status"), f"{BREAKER}/status")
    assert [b["subject"] for b in status.data["breakers"] if b["state"] == "open"] == [subject]
    assert call(stack.admin, "GET", f"{P}/status").data["circuitBreakerOpen"] is True
    assert metric_value(stack, "kpi_circuit_breaker_open", {"subject": subject}) == 1.0
    # A medium message on that subject is refused by the breaker; HTTP says 429 (onRefuse: reject).
    refused = call(stack.sidecar.http_url, "POST", f"/publish/{subject}", raw=b"x")
    assert refused.status == 429 and refused.error["details"]["reason"] == "circuit_breaker"
    assert int(refused.headers["Retry-After"]) >= 1
    # The transition is counted at the next tick.
    wait_for(
        lambda: metric_value(
            stack, "kpi_circuit_breaker_transitions_total", {"subject": subject, "to": "open"}
        )
    )
    closed = call(stack.admin, "POST", BREAKER, {"subject": subject, "action": "close"})
    assert closed.data["changed"] is True and closed.data["state"] == "closed"
    assert call(stack.sidecar.http_url, "POST", f"/publish/{subject}", raw=b"x").status == 202
    again = call(stack.admin, "POST", BREAKER, {"subject": subject, "action": "close"})
    assert again.data["changed"] is False
    reset = call(stack.admin, "POST", BREAKER, {"subject": subject, "action": "reset"})
    assert reset.status == 200 and reset.data["state"] == "closed"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"subject": "a.b", "action": "explode"}, "action"),
        ({"subject": "a.*", "action": "open"}, "subject"),
        ({"subject": "a b", "action": "open"}, "subject"),
        ({"action": "open"}, None),
        ({"subject": "a.b", "action": "open", "extra": 1}, None),
        ({"subject": 5, "action": "open"}, "subject"),
    ],
)
def test_a_bad_breaker_request_is_400(stack: Any, body: dict[str, Any], field: str | None) -> None:
    answer = check_schema(call(stack.admin, "POST", BREAKER, body), BREAKER, "POST")
    assert answer.status == 400
    if field is not None:
        assert answer.error["details"]["field"] == field


def test_clear_and_drain_the_queue(stack: Any) -> None:
    # A 1 msg/s ceiling with a burst of one: what comes after the first message waits in the queue (the
    # burst raises the level at once: sampling off, so that it is queued rather than sampled).
    update = {"maxPublishRate": 1, "rateBurstSeconds": 0.001, "enableSampling": False}
    assert call(stack.admin, "PUT", f"{P}/config", update).status == 200
    try:
        for i in range(10):
            call(stack.sidecar.http_url, "POST", f"/publish/kpi.queue.{i % 2}", raw=b"m")
        queued = call(stack.admin, "GET", f"{P}/status").data["currentQueueSize"]
        assert queued >= 8
        clear_path = f"{P}/actions/clear-queue"
        cleared = check_schema(call(stack.admin, "POST", clear_path), clear_path, "POST")
        assert cleared.data["cleared"] >= 8 and cleared.data["queueSize"] == 0
        status = call(stack.admin, "GET", f"{P}/status").data
        assert status["droppedByReason"].get("cleared", 0) >= 8
        assert metric_value(stack, "kpi_streaming_messages_dropped_total", {"reason": "cleared"}) is not None

        async def drain_and_receive() -> int:
            nc = await nats.connect(stack.nats.url)
            sub = await nc.subscribe("kpi.drain.>")
            await settle(nc)
            for _ in range(6):
                call(stack.sidecar.http_url, "POST", "/publish/kpi.drain.x", raw=b"d")
            drain_path = f"{P}/actions/drain-queue"
            drained = check_schema(call(stack.admin, "POST", drain_path), drain_path, "POST")
            assert drained.data["forwarded"] >= 5 and drained.data["queueSize"] == 0
            got = 0
            for _ in range(6):
                await sub.next_msg(timeout=3)
                got += 1
            await nc.close()
            return got

        assert asyncio.run(drain_and_receive()) == 6
    finally:
        call(stack.admin, "POST", f"{P}/config/reset")


def test_degradation_history_metrics_and_flapping_recommendation(stack: Any) -> None:
    levels = lambda: call(stack.admin, "GET", f"{P}/analytics/degradation-history").data  # noqa: E731
    # The stack is shared: an earlier test's burst may have left the level up (it rises at once and
    # recovers after recoveryDelayMs). Start from none, and look at this test's transitions only.
    assert call(stack.admin, "PUT", f"{P}/config", {"recoveryDelayMs": 0}).status == 200
    wait_for(lambda: levels()["currentLevel"] == "none", timeout=10)
    earlier = len(levels()["transitions"])
    # Memory threshold below the process's RSS: critical at the next tick.
    assert (
        call(stack.admin, "PUT", f"{P}/config", {"maxMemoryUsageMB": 1, "recoveryDelayMs": 0}).status == 200
    )
    try:
        wait_for(lambda: levels()["currentLevel"] == "critical", timeout=5)
        health = call(stack.admin, "GET", f"{P}/health")
        assert health.status == 200 and health.data["status"] == "critical"
        # Back down (straight to none: recovery goes to the load's level), then up again, twice: a
        # flapping level.
        for _ in range(2):
            call(stack.admin, "PUT", f"{P}/config", {"maxMemoryUsageMB": 100000})
            wait_for(lambda: levels()["currentLevel"] == "none", timeout=10)
            call(stack.admin, "PUT", f"{P}/config", {"maxMemoryUsageMB": 1})
            wait_for(lambda: levels()["currentLevel"] == "critical", timeout=10)
        history_path = f"{P}/analytics/degradation-history"
        history = check_schema(call(stack.admin, "GET", history_path), history_path).data
        transitions = history["transitions"][earlier:]
        assert transitions[0]["from"] == "none" and transitions[0]["to"] == "critical"
        assert transitions[0]["dominantSignal"] == "memory"
        assert transitions[-1]["to"] == "critical" and len(transitions) >= 4
        stamps = [t["timestamp"] for t in transitions]
        assert stamps == sorted(stamps)
        # Wall-clock timestamps, not monotonic ones: within the last minute.
        first = datetime.fromisoformat(stamps[0].replace("Z", "+00:00")).timestamp()
        assert time.time() - 60 < first <= time.time()
        wait_for(
            lambda: metric_value(
                stack, "kpi_backpressure_level_transitions_total", {"from": "none", "to": "critical"}
            ),
            timeout=3,
        )
        families = exported_families(call(stack.admin, "GET", "/metrics").body.decode())
        assert families["kpi_backpressure_level_transitions"] == "counter"
        recs_path = f"{P}/analytics/recommendations"
        recs = check_schema(call(stack.admin, "GET", recs_path), recs_path).data["recommendations"]
        flapping = [r for r in recs if r["id"] == "level-flapping"]
        assert flapping, recs
        rec = flapping[0]
        assert rec["severity"] == "warning" and rec["evidence"]["transitions"] >= 4
        # The suggested body is a valid PUT /config body.
        applied = call(stack.admin, "PUT", f"{P}/config", rec["suggestedConfig"])
        assert applied.status == 200 and applied.data["config"]["recoveryDelayMs"] == 10000
    finally:
        call(stack.admin, "POST", f"{P}/config/reset")


def test_drain_answers_503_while_the_upstream_is_down(stack_factory: Any) -> None:
    stack = stack_factory()
    stack.nats.stop()
    wait_for(lambda: not call(stack.admin, "GET", f"{P}/status").data["upstreamConnected"], timeout=5)
    drain_path = f"{P}/actions/drain-queue"
    answer = check_schema(call(stack.admin, "POST", drain_path), drain_path, "POST")
    assert answer.status == 503 and answer.error["code"] == "UPSTREAM_UNAVAILABLE"
    detailed = call(stack.admin, "GET", f"{P}/health/detailed").data
    assert detailed["status"] in ("degraded", "critical")
    assert detailed["components"]["upstream"]["status"] != "ok"
    assert call(stack.admin, "GET", f"{P}/health").status == 200
