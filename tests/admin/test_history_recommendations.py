"""The per-second history ring and the recommendation rules: pure, with made-up samples."""

from __future__ import annotations

from typing import Any

import pytest

from policies.config import BackpressureConfig
from proxy.admin.api import parse_config_update
from proxy.admin.history import FIELDS, INDEX, MetricHistory, fold, sample_to_json
from proxy.admin.recommendations import LevelChange, recommend

T0 = 1_800_000_000.0


def values(**overrides: float) -> list[float]:
    """One sample's values: quiet defaults, upstream connected."""
    row = dict.fromkeys(FIELDS, 0.0)
    row.update(upstreamConnected=1.0, samplingRate=1.0, batchSize=1.0, currentMemoryMB=50.0)
    row.update(overrides)
    return [row[name] for name in FIELDS]


def samples(n: int, **overrides: float) -> list[tuple[float, ...]]:
    return [(T0 + i, *values(**overrides)) for i in range(n)]


def test_the_ring_is_bounded_and_downsamples_long_ranges() -> None:
    history = MetricHistory(history_seconds=7200, fine_seconds=3600)
    for i in range(7200):
        history.record(T0 + i, values(currentQueueSize=i % 100, receivedMessages=i, currentCpuPercent=10.0))
    now = T0 + 7199.5
    assert len(history) == 3600
    five = history.points("5m", now)
    assert len(five) == 300 and five[-1][0] == T0 + 7199
    hour = history.points("1h", now)
    assert 359 <= len(hour) <= 361
    # A 10 s point keeps the worst queue size, the mean CPU and the last counter value of its interval.
    point = dict(zip(("t", *FIELDS), hour[-2], strict=True))
    assert point["currentQueueSize"] >= 9 and point["currentCpuPercent"] == 10.0
    assert point["receivedMessages"] == point["t"] - T0
    day = history.points("24h", now)
    assert 119 <= len(day) <= 121  # two hours kept, one point a minute
    assert [p[0] for p in day] == sorted(p[0] for p in day)


def test_both_rings_hold_exactly_their_limit() -> None:
    history = MetricHistory(history_seconds=180, fine_seconds=10)
    for i in range(10):
        history.record(T0 + i, values())
    assert len(history) == 10 and history.recent(60, T0 + 10)[0][0] == T0
    history.record(T0 + 10, values())
    assert len(history) == 10 and history.recent(60, T0 + 11)[0][0] == T0 + 1
    # 180 s at one point a minute: three folded minutes, plus the minute in progress.
    for i in range(11, 240):
        history.record(T0 + i, values())
    day = history.points("24h", T0 + 240)
    assert [p[0] for p in day] == [T0 + 59, T0 + 119, T0 + 179, T0 + 239]
    for i in range(240, 300):
        history.record(T0 + i, values())
    day = history.points("24h", T0 + 300)
    assert [p[0] for p in day] == [T0 + 119, T0 + 179, T0 + 239, T0 + 299]


def test_fold_modes_and_json_shape() -> None:
    rows = [
        (T0, *values(currentQueueSize=5, degradationLevel=1, upstreamConnected=1, receivedMessages=10)),
        (T0 + 1, *values(currentQueueSize=9, degradationLevel=3, upstreamConnected=0, receivedMessages=20)),
    ]
    folded = fold(rows)
    assert folded[0] == T0 + 1
    assert folded[1 + INDEX["currentQueueSize"]] == 9
    assert folded[1 + INDEX["degradationLevel"]] == 3
    assert folded[1 + INDEX["upstreamConnected"]] == 0
    assert folded[1 + INDEX["receivedMessages"]] == 20
    point = sample_to_json(folded)
    assert point["degradationLevel"] == "high" and point["degradationLevelValue"] == 3
    assert point["upstreamConnected"] is False and point["currentQueueSize"] == 9
    assert point["timestamp"].endswith("Z") and point["timestamp"].startswith("2027-01-15T")
    with pytest.raises(ValueError, match="expected"):
        MetricHistory().record(T0, [1.0])


CONFIG = BackpressureConfig(max_queue_size=1000, max_publish_rate=100, recovery_delay_ms=2000)


@pytest.mark.parametrize(
    ("window", "changes", "spool", "expected"),
    [
        (samples(120), [], 0, []),
        (samples(10, currentQueueSize=990), [], 0, []),  # too little history to judge
        (samples(29, currentQueueSize=990), [], 0, []),  # one sample short of MIN_SAMPLES
        (samples(30, currentQueueSize=990), [], 0, [("queue-pressure", "critical")]),
        (samples(120, currentQueueSize=850), [], 0, [("queue-pressure", "critical")]),
        (
            samples(90) + samples(30, currentQueueSize=900),
            [],
            0,
            [("queue-pressure", "warning")],
        ),
        (samples(60, spooledMessages=3, upstreamConnected=0), [], 0, [("critical-spooled", "critical")]),
        (samples(5), [], 12, [("critical-spooled", "critical")]),
        (samples(60, currentPublishRate=95), [], 0, [("rate-ceiling", "warning")]),
        (samples(60, currentMemoryMB=480), [], 0, [("memory-pressure", "info")]),
        (
            samples(60),
            [LevelChange(T0 + i * 10, *((0, 2) if i % 2 == 0 else (2, 1))) for i in range(6)],
            0,
            [("level-flapping", "warning")],
        ),
        # Steady escalation is not flapping.
        (samples(60), [LevelChange(T0 + i, i, i + 1) for i in range(4)], 0, []),
    ],
)
def test_recommendation_rules(
    window: list[tuple[float, ...]], changes: list[LevelChange], spool: int, expected: list[tuple[str, str]]
) -> None:
    found = recommend(window, changes, CONFIG, spool_messages=spool)
    assert [(r.id, r.severity) for r in found] == expected
    for rec in found:
        assert rec.evidence and rec.description
        # Every suggestion is a body PUT /config accepts.
        config, _, changed = parse_config_update(CONFIG, dict(rec.suggested_config))
        assert changed == list(rec.suggested_config)
        suggested: dict[str, Any] = rec.suggested_config
        if rec.id == "queue-pressure":
            assert suggested["maxQueueSize"] == 2000
        if rec.id == "level-flapping":
            assert config.recovery_delay_ms == 10_000


def test_recommendations_are_sorted_by_severity() -> None:
    window = samples(120, currentQueueSize=850, currentMemoryMB=480, spooledMessages=1)
    found = recommend(
        window, [], BackpressureConfig(max_queue_size=1000, enable_batching=False), spool_messages=0
    )
    assert [r.severity for r in found] == ["critical", "critical", "info"]
    queue = next(r for r in found if r.id == "queue-pressure")
    assert queue.suggested_config == {"maxQueueSize": 2000, "enableBatching": True}
