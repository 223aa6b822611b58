"""The new load signals, each with a fake clock: upstream RTT, queue delay (CoDel) and stream fill."""

from __future__ import annotations

import pytest

from policies.config import Level, PolicyRule, Priority
from policies.engine import Verdict
from policies.signals import (
    QueueDelay,
    RttTracker,
    StreamReading,
    fill_percent,
    latency_percent,
    refuses_new,
    stream_fill,
)
from tests.policies.fakes import Clock, Msg, make_engine, reconciles

# -- upstream RTT ------------------------------------------------------------------------------------------


def test_rtt_is_none_until_enough_samples() -> None:
    tracker = RttTracker(baseline_window_s=60, min_samples=3)
    tracker.observe(1.0, 0.002)
    tracker.observe(2.0, 0.002)
    assert tracker.reading().rtt_s is None
    tracker.observe(3.0, 0.002)
    reading = tracker.reading()
    assert reading.rtt_s == pytest.approx(0.002)
    assert reading.baseline_s == pytest.approx(0.002)
    assert reading.ratio == pytest.approx(1.0)


def test_rtt_smooths_and_the_baseline_is_the_windowed_minimum() -> None:
    tracker = RttTracker(baseline_window_s=100, min_samples=1)
    clock = Clock(0.0)
    for _ in range(50):
        tracker.observe(clock.advance(1), 0.001)
    tracker.observe(clock.advance(1), 0.101)  # one slow PONG moves the EWMA by 1/8 of the jump
    reading = tracker.reading()
    assert reading.rtt_s == pytest.approx(0.001 + 0.1 / 8)
    assert reading.baseline_s == pytest.approx(0.001)
    for _ in range(200):  # slow for two windows: the slow RTT becomes the baseline
        tracker.observe(clock.advance(1), 0.101)
    reading = tracker.reading()
    assert reading.baseline_s == pytest.approx(0.101)
    assert reading.ratio == pytest.approx(1.0)


def test_a_ping_in_flight_counts_as_a_lower_bound() -> None:
    tracker = RttTracker(baseline_window_s=60, min_samples=1)
    tracker.observe(1.0, 0.001)
    assert tracker.reading(in_flight_s=0.0005).rtt_s == pytest.approx(0.001)
    assert tracker.reading(in_flight_s=2.0).rtt_s == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("rtt_ms", "baseline_ms", "ratio", "floor_ms", "percent"),
    [
        (10, 10, 4, 0, 0),  # at the baseline
        (40, 10, 4, 0, 100),  # ratio x baseline
        (70, 10, 4, 0, 200),  # twice the excess
        (25, 10, 4, 0, 50),
        (0.15, 0.05, 4, 50, 0.2),  # loopback jitter is nothing against the floor
        (50.05, 0.05, 4, 50, 100),  # baseline + floor
    ],
)
def test_latency_percent(
    rtt_ms: float, baseline_ms: float, ratio: float, floor_ms: float, percent: float
) -> None:
    got = latency_percent(rtt_ms / 1000, baseline_ms / 1000, ratio, floor_ms / 1000)
    assert got == pytest.approx(percent, abs=0.01)


def _rtt_engine(clock: Clock, **overrides: object):  # type: ignore[no-untyped-def]
    settings = {"upstream_latency_ratio": 4, "upstream_latency_floor_ms": 0, "min_rtt_samples": 5}
    settings.update(overrides)
    return make_engine(clock, **settings)  # type: ignore[arg-type]


def test_upstream_latency_raises_the_level_and_recovers_with_hysteresis() -> None:
    clock = Clock()
    engine = _rtt_engine(clock)
    for _ in range(10):
        engine.observe_rtt(clock.advance(0.5), 0.010)
        engine.tick(clock.now, memory_mb=0, cpu_percent=0)
    assert engine.level is Level.NONE
    # The cluster slows down: 10 ms -> 60 ms, ratio 6, (60-10)/(40-10) = 167 % once smoothed.
    for _ in range(40):
        engine.observe_rtt(clock.advance(0.5), 0.060)
        engine.tick(clock.now, memory_mb=0, cpu_percent=0)
    assert engine.level is Level.HIGH
    assert engine.dominant_signal == "upstream_latency"
    snap = engine.snapshot(clock.now)
    assert snap.upstream_latency_ratio == pytest.approx(5 / 3, rel=0.01)
    assert snap.signals is not None
    assert snap.signals.rtt["ping"].baseline_ms == pytest.approx(10)
    # Back to 10 ms: the level waits recoveryDelayMs below the leave bound, then recovers.
    engine.observe_rtt(clock.advance(0.5), 0.010)
    for _ in range(60):
        engine.observe_rtt(clock.advance(0.1), 0.010)
    engine.tick(clock.now, memory_mb=0, cpu_percent=0)
    assert engine.level is Level.HIGH  # below the leave bound, the delay is running
    for _ in range(6):
        engine.observe_rtt(clock.advance(1), 0.010)
        engine.tick(clock.now, memory_mb=0, cpu_percent=0)
    assert engine.level is Level.NONE


def test_upstream_latency_is_off_with_too_few_samples_or_ratio_zero() -> None:
    for overrides in ({"min_rtt_samples": 50}, {"upstream_latency_ratio": 0}):
        clock = Clock()
        engine = _rtt_engine(clock, **overrides)
        for _ in range(3):
            engine.observe_rtt(clock.advance(0.5), 0.001)
        for _ in range(20):
            engine.observe_rtt(clock.advance(0.5), 1.0)
            engine.tick(clock.now, memory_mb=0, cpu_percent=0)
        assert engine.level is Level.NONE, overrides


def test_an_unanswered_ping_raises_the_latency() -> None:
    clock = Clock()
    engine = _rtt_engine(clock)
    for _ in range(10):
        engine.observe_rtt(clock.advance(0.5), 0.010)
    engine.observe_in_flight(0.5)  # a PING unanswered for 500 ms: RTT at least that
    engine.tick(clock.now, memory_mb=0, cpu_percent=0)
    assert engine.level is Level.CRITICAL
    assert engine.dominant_signal == "upstream_latency"


def test_puback_latency_is_a_second_source() -> None:
    clock = Clock()
    engine = _rtt_engine(clock)
    for _ in range(10):
        engine.observe_rtt(clock.advance(0.1), 0.001)
        engine.observe_rtt(clock.now, 0.005, "puback")
    for _ in range(40):
        engine.observe_rtt(clock.advance(0.1), 0.001)
        engine.observe_rtt(clock.now, 0.021, "puback")  # about (21-5)/(20-5) = 106 %
    engine.tick(clock.now, memory_mb=0, cpu_percent=0)
    assert engine.level is Level.MEDIUM
    assert engine.dominant_signal == "upstream_latency"


def test_reset_rtt_forgets_the_baseline() -> None:
    clock = Clock()
    engine = _rtt_engine(clock)
    for _ in range(10):
        engine.observe_rtt(clock.advance(0.5), 0.001)
    engine.reset_rtt()  # another server, 80 ms away: its own baseline
    for _ in range(10):
        engine.observe_rtt(clock.advance(0.5), 0.080)
        engine.tick(clock.now, memory_mb=0, cpu_percent=0)
    assert engine.level is Level.NONE


# -- queue delay -------------------------------------------------------------------------------------------


def test_queue_delay_counts_only_a_standing_delay() -> None:
    delay = QueueDelay(target_s=0.1, interval_s=0.5)
    assert delay.observe(0.0, 0.05, 10) == 0.0
    assert delay.observe(0.1, 0.2, 10) == 0.0  # above target: the interval starts
    assert delay.observe(0.5, 0.2, 10) == 0.0  # not a whole interval yet
    assert delay.observe(0.6, 0.2, 10) == pytest.approx(200.0)  # a whole interval, not shrinking: 2 x target
    assert delay.standing(0.6)
    assert delay.observe(0.7, 0.05, 10) == 0.0  # under target once: the interval starts again
    assert delay.observe(1.0, 0.3, 10) == 0.0
    assert not delay.standing(1.0)
    assert QueueDelay(0.0, 0.5).observe(5.0, 100.0, 10) == 0.0  # off


def test_the_wait_the_rate_ceiling_paces_is_not_a_queue_delay() -> None:
    """A queue the ceiling drains at its pace: its head waits about length / ceiling (publish_rate's to
    count); only the sojourn beyond that pace stands."""
    delay = QueueDelay(target_s=1.0, interval_s=0.5)
    for step in range(10):  # 2,000 queued at a ceiling of 200 msg/s: the head waits 10 s
        assert delay.observe(step * 0.25, 10.0, 2000, paced_s=10.0) == 0.0
    assert not delay.standing(2.5)
    # The upstream drains half as fast: 20 s of sojourn, 10 s beyond the ceiling's pace.
    seen = [delay.observe(3.0 + step * 0.25, 20.0, 2000, paced_s=10.0) for step in range(4)]
    assert seen[-1] == pytest.approx(1000.0)
    assert delay.sojourn_s == 20.0  # shown as it is


def test_a_draining_queue_is_not_a_standing_one() -> None:
    """After a burst the oldest message has waited long, but the queue shrinks: CoDel's good queue."""
    delay = QueueDelay(target_s=0.1, interval_s=0.5)
    length = 1000
    for step in range(20):
        assert delay.observe(step * 0.25, 2.0, length) == 0.0, step
        length -= 40
    # It stops shrinking: standing at the end of the next whole interval.
    seen = [delay.observe(5.0 + step * 0.25, 2.0, length) for step in range(5)]
    assert seen[-1] == pytest.approx(2000.0)
    assert delay.standing(6.0)


def test_a_stuck_queue_raises_the_level_by_delay_while_its_length_is_low() -> None:
    clock = Clock()
    engine = make_engine(clock, queue_delay_target_ms=100, queue_delay_interval_ms=500, max_queue_size=1000)
    for _ in range(5):
        engine.offer(Msg(), clock.now, False)  # the upstream takes nothing: 5 messages wait
    engine.tick(clock.now, memory_mb=0, cpu_percent=0)
    assert engine.level is Level.NONE
    for _ in range(4):
        engine.tick(clock.advance(0.2), memory_mb=0, cpu_percent=0)
    # Waited 0.8 s, above 100 ms since 0.2 s: standing for 0.6 s; 800 % of the target.
    assert engine.level is Level.CRITICAL
    assert engine.dominant_signal == "queue_delay"
    snap = engine.snapshot(clock.now)
    assert snap.queue_ratio == pytest.approx(0.005)
    assert snap.signals is not None and snap.signals.queue_delay_standing
    engine.take(clock.now)
    assert engine.queue_size == 0
    for _ in range(6):
        engine.tick(clock.advance(1), memory_mb=0, cpu_percent=0)
    assert engine.level is Level.NONE
    assert reconciles(engine)


# -- stream fill -------------------------------------------------------------------------------------------


def _reading(
    msgs: int, max_msgs: int, now: float, priority: Priority = Priority.MEDIUM, discard: str = "old"
):  # type: ignore[no-untyped-def]
    return StreamReading("ORDERS", priority, ("orders.>",), msgs * 10, -1, msgs, max_msgs, discard, now)


@pytest.mark.parametrize(
    ("fill", "threshold", "percent"),
    [
        (0.0, 0.9, 0.0),
        (0.45, 0.9, 50.0),
        (0.9, 0.9, 100.0),
        (0.95, 0.9, 150.0),
        (1.0, 0.9, 200.0),
        (0.5, 0, 0),
    ],
)
def test_fill_percent(fill: float, threshold: float, percent: float) -> None:
    assert fill_percent(fill, threshold) == pytest.approx(percent)


def test_stream_fill_takes_the_fuller_limit_and_reports_discard_new() -> None:
    reading = StreamReading("S", Priority.LOW, ("s",), 900, 1000, 10, 100, "new", 0.0)
    assert stream_fill(reading) == pytest.approx(0.9)
    assert not refuses_new(reading, 0.9)
    full = reading._replace(msgs=100)
    assert refuses_new(full, stream_fill(full))
    assert stream_fill(reading._replace(max_bytes=-1, max_msgs=-1)) == 0.0


def test_a_filling_stream_raises_its_class_only() -> None:
    clock = Clock()
    rules = [PolicyRule(subject="orders.>", priority="low", delivery="jetstream")]  # type: ignore[arg-type]
    engine = make_engine(clock, rules, recovery_delay_ms=1000, enable_batching=False)
    engine.observe_stream(_reading(96, 100, clock.now, Priority.LOW))  # 96 % full: 160 % -> high
    engine.tick(clock.now, memory_mb=0, cpu_percent=0)
    assert engine.level is Level.NONE  # the sidecar's level does not move
    assert engine.class_levels() == {Priority.LOW: Level.HIGH}
    [change] = engine.pop_class_transitions()
    assert (change.priority, change.transition.to_level, change.stream) == (
        Priority.LOW,
        Level.HIGH,
        "ORDERS",
    )
    low = engine.offer(Msg("orders.new", Priority.LOW), clock.now, True)
    medium = engine.offer(Msg("other", Priority.MEDIUM), clock.now, True)
    assert low.verdict is Verdict.DROP and low.reason == "low_priority"
    assert medium.verdict is Verdict.FORWARD
    snap = engine.snapshot(clock.now)
    assert snap.signals is not None
    assert snap.signals.class_levels == {"low": "high"}
    [stream] = snap.signals.streams
    assert (stream.name, stream.fill, stream.load_percent) == ("ORDERS", 0.96, pytest.approx(160))
    # The stream is consumed: after the recovery delay the class is back to none.
    engine.observe_stream(_reading(10, 100, clock.advance(1)))
    engine.observe_stream(_reading(10, 100, clock.now, Priority.LOW))
    engine.tick(clock.now, memory_mb=0, cpu_percent=0)
    engine.tick(clock.advance(1.5), memory_mb=0, cpu_percent=0)
    assert engine.class_levels() == {}
    assert engine.offer(Msg("orders.new", Priority.LOW), clock.now, True).verdict is Verdict.FORWARD
    assert reconciles(engine)


def test_a_class_below_the_global_level_adds_nothing_and_stale_readings_go() -> None:
    clock = Clock()
    engine = make_engine(clock, enable_batching=False)
    engine.observe_stream(_reading(92, 100, clock.now))  # 120 % -> medium for medium messages
    engine.tick(clock.now, memory_mb=1600, cpu_percent=0)  # 160 % memory: the sidecar is high already
    assert engine.level is Level.HIGH
    assert engine.class_levels() == {Priority.MEDIUM: Level.MEDIUM}
    assert engine._class_raise == {}  # the global level sheds more already
    engine.tick(clock.advance(120), memory_mb=0, cpu_percent=0)  # no fresh reading for 2 minutes
    snap = engine.snapshot(clock.now)
    assert snap.signals is not None and snap.signals.streams == []


def test_stream_fill_off_with_threshold_zero() -> None:
    clock = Clock()
    engine = make_engine(clock, stream_fill_threshold=0)
    engine.observe_stream(_reading(100, 100, clock.now, discard="new"))
    engine.tick(clock.now, memory_mb=0, cpu_percent=0)
    assert engine.class_levels() == {}


def test_queue_delay_pauses_while_the_upstream_is_away() -> None:
    clock = Clock()
    engine = make_engine(clock, queue_delay_target_ms=100, queue_delay_interval_ms=500, max_queue_size=1000)
    for _ in range(5):
        engine.offer(Msg(), clock.now, False)
    for _ in range(10):
        engine.tick(clock.advance(0.2), memory_mb=0, cpu_percent=0, upstream_connected=False)
    assert (
        engine.level is Level.NONE
    )  # an outage: the queue waits for the upstream, length and spool cover it
    for _ in range(4):
        engine.tick(clock.advance(0.2), memory_mb=0, cpu_percent=0, upstream_connected=True)
    assert engine.level is Level.CRITICAL  # connected and still not draining: a standing delay
    assert engine.dominant_signal == "queue_delay"


def test_round_trips_of_a_starved_sidecar_are_not_blamed_on_the_upstream() -> None:
    """With the CPU at or above the low floor, a PONG waits for the loop: the CPU signal counts it."""
    clock = Clock()
    engine = _rtt_engine(clock)
    for _ in range(10):
        engine.observe_rtt(clock.advance(0.5), 0.010)
    for _ in range(40):
        engine.observe_rtt(clock.advance(0.5), 0.100)
    engine.tick(clock.now, memory_mb=0, cpu_percent=120)  # 120 % of maxCpuUsagePercent 100
    assert engine.dominant_signal == "cpu"
    assert engine.level is Level.MEDIUM
    assert engine.snapshot(clock.now).upstream_latency_ratio == 0.0
    engine.tick(clock.advance(1), memory_mb=0, cpu_percent=10)
    assert engine.dominant_signal == "upstream_latency"
    assert engine.level is Level.CRITICAL


def test_bounds_streams_rtt_slots_and_class_changes() -> None:
    from policies.signals import BASELINE_SLOTS, MAX_STREAMS

    clock = Clock()
    engine = make_engine(clock)
    for i in range(MAX_STREAMS + 10):
        engine.observe_stream(_reading(1, 100, clock.now)._replace(name=f"S{i}"))
    assert len(engine.stream_names()) == MAX_STREAMS  # the rest ignored until one goes
    engine.forget_stream("S0")
    engine.observe_stream(_reading(1, 100, clock.now)._replace(name="late"))
    assert "late" in engine.stream_names()
    tracker = RttTracker(baseline_window_s=10, min_samples=1)
    for step in range(10_000):
        tracker.observe(step * 0.1, 0.001 + (step % 7) * 0.001)
    assert len(tracker._slots) <= BASELINE_SLOTS + 1  # bounded whatever the PONG rate
    for step in range(300):  # a stream flapping around its threshold: pending changes stay bounded
        engine.observe_stream(_reading(100 if step % 2 else 0, 100, clock.now, Priority.LOW))
        engine.tick(clock.advance(10), memory_mb=0, cpu_percent=0)
    assert len(engine.pop_class_transitions()) <= 100


def test_new_signal_settings_apply_at_update_config() -> None:
    clock = Clock()
    engine = _rtt_engine(clock)
    for _ in range(10):
        engine.observe_rtt(clock.advance(0.5), 0.010)
    for _ in range(40):
        engine.observe_rtt(clock.advance(0.5), 0.060)
    engine.tick(clock.now, memory_mb=0, cpu_percent=0)
    assert engine.level is Level.HIGH
    from tests.policies.fakes import config

    engine.update_config(config(upstream_latency_ratio=0, recovery_delay_ms=0), now=clock.now)
    engine.tick(clock.advance(1), memory_mb=0, cpu_percent=0)
    assert engine.level is Level.NONE
    with pytest.raises(ValueError, match="upstreamLatencyRatio"):
        config(upstream_latency_ratio=0.5)
