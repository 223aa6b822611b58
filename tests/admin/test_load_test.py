"""POST /load-test: real traffic through the publish path to the upstream, measured end to end."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import nats
import pytest

from proxy.admin.load_test import MAX_RATE, LatencyReservoir, percentile
from tests.admin.api import call, check_schema, wait_for
from tests.conftest import settle

P = "/api/backpressure"
START = f"{P}/load-test"
STATUS = f"{P}/load-test/status"
STOP = f"{P}/load-test/stop"


def status(stack: Any) -> dict[str, Any]:
    return check_schema(call(stack.admin, "GET", STATUS), STATUS).data


def test_a_load_test_reaches_the_upstream_with_its_priority(stack: Any) -> None:
    body = {
        "messagesPerSecond": 400,
        "durationSeconds": 1.5,
        "messageSize": 256,
        "subjects": ["test.load.marketing", "test.load.payment"],
        "priority": "high",
    }

    async def run() -> list[Any]:
        # An independent subscriber on the upstream sees the same messages.
        nc = await nats.connect(stack.nats.url)
        sub = await nc.subscribe("test.load.>")
        await settle(nc)
        started = check_schema(call(stack.admin, "POST", START, body), START, "POST")
        assert started.status == 202 and started.data["running"] is True
        busy = check_schema(call(stack.admin, "POST", START, body), START, "POST")
        assert busy.status == 409 and busy.error["code"] == "LOAD_TEST_RUNNING"
        running = status(stack)
        assert running["running"] is True and running["state"] in ("starting", "running")
        msgs = []
        for _ in range(600):
            msgs.append(await sub.next_msg(timeout=5))
        await nc.close()
        return msgs

    msgs = asyncio.run(run())
    assert {m.subject for m in msgs} == set(body["subjects"])
    assert all(len(m.data) == 256 and m.headers.get("KPI-Priority") == "high" for m in msgs)
    final = wait_for(lambda: (s := status(stack))["state"] == "completed" and s, timeout=10)
    assert final["running"] is False and final["progress"] == 100.0
    assert final["sent"] == final["plannedMessages"] == 600
    assert final["forwarded"] == 600 and final["successRate"] == 100.0 and final["dropped"] == 0
    latency = final["latencyMs"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert final["spec"] == body
    # A finished test does not block the next one.
    again = call(stack.admin, "POST", START, {**body, "durationSeconds": 0.2, "messagesPerSecond": 50})
    assert again.status == 202
    wait_for(lambda: not status(stack)["running"], timeout=10)


def test_stop_ends_a_running_test(stack: Any) -> None:
    body = {"messagesPerSecond": 200, "durationSeconds": 60, "messageSize": 64, "subjects": ["test.stop.a"]}
    assert call(stack.admin, "POST", START, body).status == 202
    wait_for(lambda: status(stack)["sent"] > 0, timeout=5)
    stopped = check_schema(call(stack.admin, "POST", STOP), STOP, "POST")
    assert stopped.status == 200
    assert stopped.data["state"] == "stopped" and stopped.data["running"] is False
    assert 0 < stopped.data["sent"] < stopped.data["plannedMessages"] == 12000
    # Stopping when nothing runs is a no-op.
    assert call(stack.admin, "POST", STOP).data["state"] == "stopped"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"durationSeconds": 1, "messageSize": 64, "subjects": ["a"]}, None),
        (
            {"messagesPerSecond": MAX_RATE + 1, "durationSeconds": 1, "messageSize": 64, "subjects": ["a"]},
            None,
        ),
        (
            {"messagesPerSecond": 10, "durationSeconds": 0, "messageSize": 64, "subjects": ["a"]},
            "durationSeconds",
        ),
        ({"messagesPerSecond": 10, "durationSeconds": 1, "messageSize": 8, "subjects": ["a"]}, "messageSize"),
        ({"messagesPerSecond": 10, "durationSeconds": 1, "messageSize": 64, "subjects": []}, "subjects"),
        ({"messagesPerSecond": 10, "durationSeconds": 1, "messageSize": 64, "subjects": ["a.*"]}, None),
        ({"messagesPerSecond": 10, "durationSeconds": 1, "messageSize": 64, "subjects": ["a"], "x": 1}, None),
        (
            {
                "messagesPerSecond": 10,
                "durationSeconds": 1,
                "messageSize": 64,
                "subjects": ["a"],
                "priority": "max",
            },
            None,
        ),
        ({"messagesPerSecond": 20000, "durationSeconds": 1, "messageSize": 1048576, "subjects": ["a"]}, None),
        # Within the limits but above the upstream's max_payload once the KPI-Priority header is added.
        (
            {
                "messagesPerSecond": 1,
                "durationSeconds": 1,
                "messageSize": 1048576,
                "subjects": ["a"],
                "priority": "low",
            },
            "messageSize",
        ),
    ],
)
def test_a_bad_body_is_400(stack: Any, body: dict[str, Any], field: str | None) -> None:
    answer = check_schema(call(stack.admin, "POST", START, body), START, "POST")
    assert answer.status == 400, answer
    assert answer.error["code"] == "VALIDATION_ERROR"
    if field is not None:
        assert answer.error["details"]["field"] == field
    assert status(stack)["running"] is False


def test_latency_reservoir_is_bounded_and_percentiles_are_nearest_rank() -> None:
    reservoir = LatencyReservoir(capacity=100, rng=random.Random(1234))
    for i in range(10_000):
        reservoir.observe(i / 1000)
    assert len(reservoir.values) == 100 and reservoir.count == 10_000
    summary = reservoir.summary_ms()
    assert summary is not None and summary["max"] == 9999.0
    assert 3000 < summary["p50"] < 7000  # a uniform sample of 0..10 s
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0
    assert LatencyReservoir().summary_ms() is None


def test_latency_reservoir_keeps_every_value_up_to_its_capacity() -> None:
    reservoir = LatencyReservoir(capacity=100, rng=random.Random(1234))
    for i in range(100):
        reservoir.observe(i / 1000)
    assert list(reservoir.values) == [i / 1000 for i in range(100)]
    reservoir.observe(1.0)
    assert len(reservoir.values) == 100 and reservoir.count == 101
