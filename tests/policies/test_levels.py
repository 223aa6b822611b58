"""Signals -> load percent -> level: boundaries, dominant signal, CPU quota, hysteresis, history."""

from __future__ import annotations

import pytest

from policies.config import Level
from policies.levels import LevelTracker, Transition, level_for_load, recovery_threshold
from tests.policies.fakes import Clock, Msg, make_engine, tick_load

BOUNDARIES = [
    (0.0, Level.NONE),
    (69.9, Level.NONE),
    (70.0, Level.LOW),
    (99.9, Level.LOW),
    (100.0, Level.MEDIUM),
    (149.9, Level.MEDIUM),
    (150.0, Level.HIGH),
    (199.9, Level.HIGH),
    (200.0, Level.CRITICAL),
    (1000.0, Level.CRITICAL),
]


@pytest.mark.parametrize(("load", "level"), BOUNDARIES)
def test_level_for_load(load: float, level: Level) -> None:
    assert level_for_load(load) is level


@pytest.mark.parametrize(("load", "level"), BOUNDARIES)
def test_engine_escalates_at_each_boundary_through_the_memory_signal(load: float, level: Level) -> None:
    clock = Clock()
    engine = make_engine(clock)
    transition = engine.tick(clock.now, memory_mb=load * 10, cpu_percent=0.0)
    assert engine.load_percent == pytest.approx(load)
    assert engine.level is level
    if level is Level.NONE:
        assert transition is None
    else:
        assert transition == Transition(clock.now, Level.NONE, level, engine.load_percent, "memory")


@pytest.mark.parametrize(
    ("signals", "queued", "offered_per_s", "dominant", "load"),
    [
        ({"memory_mb": 800, "cpu_percent": 10}, 0, 0, "memory", 80.0),
        ({"memory_mb": 100, "cpu_percent": 90}, 0, 0, "cpu", 90.0),
        ({"memory_mb": 100, "cpu_percent": 10}, 75, 0, "queue", 75.0),
        ({"memory_mb": 100, "cpu_percent": 10}, 0, 1500, "publish_rate", 150.0),
    ],
)
def test_dominant_signal(
    signals: dict[str, float], queued: int, offered_per_s: int, dominant: str, load: float
) -> None:
    clock = Clock()
    engine = make_engine(clock, max_publish_rate=1000, max_queue_size=100, rate_burst_seconds=0.001)
    for _ in range(queued):
        engine.offer(Msg(), clock.now, False)
    if offered_per_s:
        # A steady flood over two windows, taken out as fast as the ceiling allows.
        for _ in range(2 * offered_per_s):
            engine.offer(Msg(), clock.advance(1 / offered_per_s), True)
            engine.take(clock.now)
        engine.drain(clock.now)
    engine.tick(clock.now, **signals)
    assert engine.dominant_signal == dominant
    assert engine.load_percent == pytest.approx(load, rel=0.02)


@pytest.mark.parametrize(
    ("max_cpu", "quota", "cpu_percent", "load"),
    [
        (80, None, 40, 50.0),  # no quota: percent of one core against the setting
        (80, 0.5, 20, 50.0),  # half a core: the threshold is 40 % of one core
        (80, 2.0, 40, 50.0),  # more than a core: the setting stands
        (1000, 0.5, 50, 10.0),  # a threshold above reach: at most 10 %, the signal never matters
        (100, float("inf"), 50, 50.0),  # an unlimited quota is no quota
    ],
)
def test_cpu_threshold_follows_the_quota(
    max_cpu: float, quota: float | None, cpu_percent: float, load: float
) -> None:
    clock = Clock()
    engine = make_engine(clock, max_cpu_usage_percent=max_cpu)
    engine.tick(clock.now, memory_mb=0, cpu_percent=cpu_percent, cpu_quota_cores=quota)
    assert engine.load_percent == pytest.approx(load)
    assert engine.dominant_signal == "cpu"


def test_cpu_quota_is_kept_when_omitted_and_cleared_by_none() -> None:
    clock = Clock()
    engine = make_engine(clock, max_cpu_usage_percent=80)
    engine.tick(clock.now, memory_mb=0, cpu_percent=20, cpu_quota_cores=0.5)
    assert engine.cpu_threshold_percent == 40
    engine.tick(clock.now, cpu_percent=20)
    assert engine.cpu_threshold_percent == 40
    engine.tick(clock.now, cpu_percent=20, cpu_quota_cores=None)
    assert engine.cpu_threshold_percent == 80


def test_omitted_samples_keep_their_last_value() -> None:
    clock = Clock()
    engine = make_engine(clock)
    engine.tick(clock.now, memory_mb=1600, cpu_percent=0)
    assert engine.level is Level.HIGH
    engine.tick(clock.advance(1))
    assert engine.load_percent == 160.0


def test_escalation_is_immediate_and_may_skip_levels() -> None:
    clock = Clock()
    engine = make_engine(clock)
    transition = engine.tick(clock.now, memory_mb=2500, cpu_percent=0)
    assert transition is not None
    assert (transition.from_level, transition.to_level) == (Level.NONE, Level.CRITICAL)
    assert engine.level is Level.CRITICAL


@pytest.mark.parametrize(
    ("level", "threshold_percent", "expected"),
    [
        (Level.LOW, 70, 49.0),
        (Level.MEDIUM, 70, 70.0),
        (Level.HIGH, 70, 105.0),
        (Level.CRITICAL, 70, 140.0),
        (Level.HIGH, 50, 75.0),
        (Level.HIGH, 100, 150.0),
        (Level.HIGH, 150, 150.0),  # above 100 % it would flap: capped at the lower bound
    ],
)
def test_recovery_threshold_is_relative_to_the_current_level(
    level: Level, threshold_percent: float, expected: float
) -> None:
    assert recovery_threshold(level, threshold_percent) == pytest.approx(expected)


def _tracker_at(level_load: float, delay_ms: int = 5000) -> LevelTracker:
    tracker = LevelTracker(70, delay_ms)
    tracker.observe(0.0, level_load, "memory")
    return tracker


def test_stays_at_level_until_below_threshold_for_the_whole_delay() -> None:
    tracker = _tracker_at(160)  # high; recovery threshold 105
    assert tracker.level is Level.HIGH
    # Below the level's bound but above the threshold: no recovery, however long.
    for t in range(1, 60):
        assert tracker.observe(float(t), 120.0, "memory") is None
    assert tracker.level is Level.HIGH
    # Below the threshold: the delay runs from the first sample below it.
    assert tracker.observe(60.0, 104.9, "memory") is None
    assert tracker.observe(64.999, 104.9, "memory") is None
    transition = tracker.observe(65.0, 104.9, "memory")
    assert transition == Transition(65.0, Level.HIGH, Level.MEDIUM, 104.9, "memory")


def test_recovery_goes_one_level_at_a_time_each_with_its_own_delay() -> None:
    tracker = _tracker_at(250)
    assert tracker.level is Level.CRITICAL
    steps = []
    for t in range(1, 40):
        transition = tracker.observe(float(t), 0.0, "memory")
        if transition is not None:
            steps.append((t, transition.from_level, transition.to_level))
    assert steps == [
        (6, Level.CRITICAL, Level.HIGH),
        (11, Level.HIGH, Level.MEDIUM),
        (16, Level.MEDIUM, Level.LOW),
        (21, Level.LOW, Level.NONE),
    ]


def test_a_bounce_above_the_threshold_restarts_the_recovery_timer() -> None:
    tracker = _tracker_at(160)
    tracker.observe(1.0, 50.0, "memory")
    tracker.observe(5.0, 50.0, "memory")
    tracker.observe(5.5, 110.0, "memory")  # above 105: the timer is reset
    assert tracker.observe(6.0, 50.0, "memory") is None
    assert tracker.observe(10.9, 50.0, "memory") is None
    transition = tracker.observe(11.0, 50.0, "memory")
    assert transition is not None and transition.to_level is Level.MEDIUM


def test_a_higher_load_during_recovery_escalates_at_once() -> None:
    tracker = _tracker_at(160)
    tracker.observe(1.0, 50.0, "memory")
    transition = tracker.observe(2.0, 210.0, "cpu")
    assert transition == Transition(2.0, Level.HIGH, Level.CRITICAL, 210.0, "cpu")
    assert tracker.below_since is None


def test_zero_recovery_delay_steps_down_on_each_sample() -> None:
    tracker = _tracker_at(250, delay_ms=0)
    levels = []
    for t in range(1, 6):
        tracker.observe(float(t), 0.0, "memory")
        levels.append(tracker.level)
    assert levels == [Level.HIGH, Level.MEDIUM, Level.LOW, Level.NONE, Level.NONE]


def test_engine_hysteresis_and_history() -> None:
    clock = Clock()
    engine = make_engine(clock, recovery_delay_ms=2000)
    tick_load(engine, clock.now, 120)
    assert engine.level is Level.MEDIUM
    tick_load(engine, clock.advance(1), 60)  # below 70 (70 % of 100): timer starts
    tick_load(engine, clock.advance(1), 60)
    assert engine.level is Level.MEDIUM
    tick_load(engine, clock.advance(1), 60)
    assert engine.level is Level.LOW
    history = engine.history()
    assert [(t.from_level, t.to_level) for t in history] == [
        (Level.NONE, Level.MEDIUM),
        (Level.MEDIUM, Level.LOW),
    ]
    assert history[-1].timestamp_monotonic == clock.now


def test_history_is_bounded_to_1000_transitions() -> None:
    clock = Clock()
    engine = make_engine(clock, recovery_delay_ms=0)
    for i in range(1500):
        tick_load(engine, clock.advance(1), 80 if i % 2 == 0 else 0)
    history = engine.history()
    assert len(history) == 1000
    assert history[-1].timestamp_monotonic == clock.now


def test_mitigation_settings_follow_the_level() -> None:
    clock = Clock()
    engine = make_engine(clock)
    expected = {
        Level.NONE: (1.0, 1),
        Level.LOW: (0.9, 5),
        Level.MEDIUM: (0.7, 10),
        Level.HIGH: (0.5, 20),
        Level.CRITICAL: (0.2, 50),
    }
    for load, level in [
        (0, Level.NONE),
        (80, Level.LOW),
        (120, Level.MEDIUM),
        (170, Level.HIGH),
        (250, Level.CRITICAL),
    ]:
        tick_load(engine, clock.now, load)
        assert engine.level is level
        assert (engine.sampling_rate, engine.batch_size) == expected[level]
