"""Signals -> load percent -> level: boundaries, dominant signal, CPU quota, hysteresis, history."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.config import Level
from policies.levels import LevelTracker, Transition, leave_bound, level_for_load, recovered_level
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
    engine = make_engine(
        clock, max_publish_rate=1000, max_queue_size=100, rate_burst_seconds=0.001, enable_sampling=False
    )
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
        (Level.LOW, 70, 70.0),  # the seed's default: back to none below 70
        (Level.LOW, 60, 60.0),  # production
        (Level.LOW, 150, 70.0),  # never above the band's own floor
        (Level.MEDIUM, 70, 90.0),
        (Level.HIGH, 60, 135.0),
        (Level.CRITICAL, 70, 180.0),
        (Level.NONE, 70, 0.0),
    ],
)
def test_leave_bound(level: Level, threshold_percent: float, expected: float) -> None:
    assert leave_bound(level, threshold_percent) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("load", "threshold_percent", "level"),
    [
        (10, 70, Level.NONE),
        (65, 70, Level.NONE),
        (65, 60, Level.LOW),
        (95, 70, Level.LOW),
        (140, 70, Level.MEDIUM),
    ],
)
def test_recovery_goes_to_the_level_the_load_alone_gives(
    load: float, threshold_percent: float, level: Level
) -> None:
    assert recovered_level(load, threshold_percent) is level


def _tracker_at(level_load: float, delay_ms: int = 5000, threshold_percent: float = 70) -> LevelTracker:
    tracker = LevelTracker(threshold_percent, delay_ms)
    tracker.observe(0.0, level_load, "memory")
    return tracker


def test_stays_at_level_until_below_its_leave_bound_for_the_whole_delay() -> None:
    tracker = _tracker_at(160)  # high; leave bound 135
    assert tracker.level is Level.HIGH
    # Below the level's floor but within the hysteresis margin: no recovery, however long.
    for t in range(1, 60):
        assert tracker.observe(float(t), 140.0, "memory") is None
    assert tracker.level is Level.HIGH
    # Below the bound: the delay runs from the first sample below it, then straight to the load's level.
    assert tracker.observe(60.0, 80.0, "memory") is None
    assert tracker.observe(64.999, 80.0, "memory") is None
    transition = tracker.observe(65.0, 80.0, "memory")
    assert transition == Transition(65.0, Level.HIGH, Level.LOW, 80.0, "memory")


def test_critical_returns_to_none_in_one_delay() -> None:
    tracker = _tracker_at(250)
    steps = []
    for t in range(1, 40):
        transition = tracker.observe(float(t), 10.0, "memory")
        if transition is not None:
            steps.append((t, transition.from_level, transition.to_level))
    assert steps == [(6, Level.CRITICAL, Level.NONE)]


def test_a_load_between_the_threshold_and_the_low_band_holds_low_and_below_it_returns_to_none() -> None:
    tracker = _tracker_at(250, threshold_percent=60)  # production: back to none below 60
    for t in range(1, 7):
        tracker.observe(float(t), 65.0, "memory")
    assert tracker.level is Level.LOW
    for t in range(7, 60):
        tracker.observe(float(t), 65.0, "memory")
    assert tracker.level is Level.LOW
    for t in range(60, 66):
        tracker.observe(float(t), 55.0, "memory")
    assert tracker.level is Level.NONE


def test_a_bounce_above_the_bound_restarts_the_recovery_timer() -> None:
    tracker = _tracker_at(160)
    tracker.observe(1.0, 50.0, "memory")
    tracker.observe(5.0, 50.0, "memory")
    tracker.observe(5.5, 140.0, "memory")  # above 135: the timer is reset
    assert tracker.observe(6.0, 50.0, "memory") is None
    assert tracker.observe(10.9, 50.0, "memory") is None
    transition = tracker.observe(11.0, 50.0, "memory")
    assert transition is not None and transition.to_level is Level.NONE


def test_a_higher_load_during_recovery_escalates_at_once() -> None:
    tracker = _tracker_at(160)
    tracker.observe(1.0, 50.0, "memory")
    transition = tracker.observe(2.0, 210.0, "cpu")
    assert transition == Transition(2.0, Level.HIGH, Level.CRITICAL, 210.0, "cpu")
    assert tracker.below_since is None


def test_escalate_moves_up_only() -> None:
    tracker = _tracker_at(160)
    assert tracker.escalate(1.0, 10.0, "queue") is None
    assert tracker.level is Level.HIGH
    transition = tracker.escalate(1.5, 230.0, "queue")
    assert transition == Transition(1.5, Level.HIGH, Level.CRITICAL, 230.0, "queue")


def test_zero_recovery_delay_recovers_on_the_first_sample_below() -> None:
    tracker = _tracker_at(250, delay_ms=0)
    tracker.observe(1.0, 0.0, "memory")
    assert tracker.level is Level.NONE


@pytest.mark.parametrize(("low", "high"), [(95.0, 105.0), (85.0, 105.0), (60.0, 75.0), (170.0, 210.0)])
def test_a_load_oscillating_around_a_boundary_does_not_flap(low: float, high: float) -> None:
    tracker = LevelTracker(70, 5000)
    changes = 0
    for t in range(200):  # one sample a second, alternating
        if tracker.observe(float(t), high if t % 2 == 0 else low, "memory") is not None:
            changes += 1
    assert changes == 1  # up once, and it stays


@settings(max_examples=200, deadline=None)
@given(
    loads=st.lists(st.floats(min_value=0, max_value=400, allow_nan=False), min_size=1, max_size=120),
    delay_ms=st.sampled_from([0, 1000, 5000]),
    threshold=st.sampled_from([50.0, 60.0, 70.0]),
)
def test_recovery_properties(loads: list[float], delay_ms: int, threshold: float) -> None:
    """For any load sampled once a second: a step down comes only after a full delay below the leave
    bound with no step up in between, and lands on the level the load alone gives; escalation is
    immediate."""
    tracker = LevelTracker(threshold, delay_ms)
    delay_s = delay_ms / 1000
    last_up: float | None = None
    below_from: float | None = None
    for t, load in enumerate(loads):
        before = tracker.level
        bound = leave_bound(before, threshold)
        if before is Level.NONE or load >= bound:
            below_from = None
        elif below_from is None:
            below_from = float(t)
        transition = tracker.observe(float(t), load, "memory")
        if level_for_load(load) > before:
            assert transition is not None and transition.to_level is level_for_load(load)
            last_up = float(t)
            below_from = None
        elif transition is not None:
            assert transition.to_level < before
            assert below_from is not None and t - below_from >= delay_s
            assert last_up is None or t - last_up >= delay_s
            assert transition.to_level is recovered_level(load, threshold)
            below_from = None


def test_after_an_overload_a_load_below_the_threshold_is_untouched_within_two_delays() -> None:
    clock = Clock()
    engine = make_engine(clock, recovery_delay_ms=5000)
    for _ in range(5):
        tick_load(engine, clock.advance(1), 300)
    assert engine.level is Level.CRITICAL
    end = clock.now
    while engine.level is not Level.NONE:
        tick_load(engine, clock.advance(1), 60)
        assert clock.now - end <= 2 * 5.0
    assert engine.sampling_rate == 1.0


def test_engine_hysteresis_and_history() -> None:
    clock = Clock()
    engine = make_engine(clock, recovery_delay_ms=2000)
    tick_load(engine, clock.now, 120)
    assert engine.level is Level.MEDIUM
    tick_load(engine, clock.advance(1), 80)  # below 90: timer starts
    tick_load(engine, clock.advance(1), 80)
    assert engine.level is Level.MEDIUM
    tick_load(engine, clock.advance(1), 80)
    assert engine.level is Level.LOW
    history = engine.history()
    assert [(t.from_level, t.to_level) for t in history] == [
        (Level.NONE, Level.MEDIUM),
        (Level.MEDIUM, Level.LOW),
    ]
    assert history[-1].timestamp_monotonic == clock.now
    assert engine.pop_transitions() == history
    assert engine.pop_transitions() == []


def test_a_queue_crossing_a_band_raises_the_level_between_ticks() -> None:
    clock = Clock()
    engine = make_engine(clock, max_queue_size=100)
    tick_load(engine, clock.now, 0)
    for _ in range(69):
        engine.offer(Msg(), clock.now, False)
    assert engine.level is Level.NONE
    engine.offer(Msg(), clock.now, False)  # 70 queued: 70 %, the low band, no tick needed
    assert engine.level is Level.LOW
    for _ in range(130):
        engine.offer(Msg(), clock.now, False)  # 100 queued, then queue_full drops
    assert engine.level is Level.MEDIUM
    assert [t.to_level for t in engine.pop_transitions()] == [Level.LOW, Level.MEDIUM]


def test_the_publish_rate_raises_the_level_between_ticks() -> None:
    clock = Clock()
    engine = make_engine(clock, max_publish_rate=1000)
    tick_load(engine, clock.now, 0)
    for _ in range(3000):  # 3000 msg/s for one second, no tick
        engine.offer(Msg(), clock.advance(1 / 3000), True)
    assert engine.level is Level.CRITICAL


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
