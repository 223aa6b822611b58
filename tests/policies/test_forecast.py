"""The saturation forecast with a fake clock: a ramp, a spike, noise and a reversal."""

from __future__ import annotations

import random

import pytest

from policies.config import Level
from policies.engine import Verdict
from policies.forecast import TrendTracker, predicted_percent, theil_sen
from tests.policies.fakes import Clock, Msg, make_engine, reconciles


def test_theil_sen_ignores_one_outlier() -> None:
    points = [(float(t), 2.0 * t + 1) for t in range(10)]
    points[4] = (4.0, 1000.0)
    slope, intercept = theil_sen(points)  # type: ignore[misc]
    assert slope == pytest.approx(2.0)
    assert intercept == pytest.approx(1.0)
    assert theil_sen([(1.0, 5.0), (1.0, 6.0)]) is None


def _tracker() -> TrendTracker:
    return TrendTracker(window_s=30, min_samples=5)


def test_a_ramp_gives_the_time_to_full() -> None:
    trend = _tracker()
    for t in range(10):
        trend.observe(100.0 + t, 50.0 * t)  # +50 a second, 450 now
    forecast = trend.forecast(109.0, capacity=1000, horizon_s=10)
    assert forecast.slope_per_s == pytest.approx(50)
    assert forecast.seconds_to_full == pytest.approx(11)
    assert forecast.projected == pytest.approx(950)
    assert predicted_percent(forecast, 1000) == pytest.approx(95)


def test_too_few_samples_predict_nothing() -> None:
    trend = _tracker()
    for t in range(4):
        trend.observe(float(t), 100.0 * t)
    forecast = trend.forecast(3.0, 1000, 10)
    assert forecast.slope_per_s is None and predicted_percent(forecast, 1000) == 0.0


def test_a_spike_does_not_move_the_forecast() -> None:
    trend = _tracker()
    for t in range(20):
        trend.observe(float(t), 900.0 if t in (12, 19) else 100.0)  # one spike, and one in the last sample
    forecast = trend.forecast(19.0, 1000, 10)
    assert forecast.slope_per_s == pytest.approx(0.0)
    assert forecast.fitted == pytest.approx(100.0)
    assert predicted_percent(forecast, 1000) == 0.0


def test_noise_around_a_level_predicts_nothing_beyond_it() -> None:
    rng = random.Random(7)
    trend = _tracker()
    for t in range(30):
        trend.observe(float(t), 300.0 + rng.uniform(-50, 50))
    forecast = trend.forecast(29.0, 1000, 10)
    assert forecast.slope_per_s is not None and abs(forecast.slope_per_s) < 5
    assert predicted_percent(forecast, 1000) < 40  # the queue's own 30 %, give or take the noise


def test_a_reversal_ends_the_prediction() -> None:
    trend = _tracker()
    t = 0.0
    for _ in range(10):
        trend.observe(t, 40.0 * t)
        t += 1
    assert trend.forecast(t - 1, 1000, 10).seconds_to_full is not None
    peak = 40.0 * (t - 1)
    for k in range(1, 30):
        trend.observe(t, peak - 40.0 * k)
        t += 1
    forecast = trend.forecast(t - 1, 1000, 10)
    assert forecast.slope_per_s is not None and forecast.slope_per_s < 0
    assert forecast.seconds_to_full is None
    assert predicted_percent(forecast, 1000) == 0.0


def test_the_window_bounds_the_samples() -> None:
    trend = TrendTracker(window_s=10, min_samples=2, max_samples=60)
    for t in range(100):
        trend.observe(float(t), 0.0)
    assert len(trend) == 11
    small = TrendTracker(window_s=1000, min_samples=2, max_samples=5)
    for t in range(100):
        small.observe(float(t), 0.0)
    assert len(small) == 5


def _ramp(engine, clock: Clock, per_tick: int, ticks: int) -> list[tuple[int, Level]]:  # type: ignore[no-untyped-def]
    """Offer `per_tick` messages a second with the upstream taking nothing; (queue size, level) per tick."""
    seen = []
    for _ in range(ticks):
        for _ in range(per_tick):
            engine.offer(Msg(), clock.now, False)
        engine.tick(clock.advance(1), memory_mb=0, cpu_percent=0)
        seen.append((engine.queue_size, engine.level))
    return seen


def _ramp_engine(clock: Clock, horizon_s: float):  # type: ignore[no-untyped-def]
    return make_engine(
        clock,
        max_queue_size=1000,
        prediction_horizon_s=horizon_s,
        prediction_min_samples=3,
        queue_delay_target_ms=0,
        enable_sampling=False,
        enable_batching=False,
    )


def test_a_queue_ramp_escalates_before_the_queue_is_full() -> None:
    clock = Clock()
    engine = _ramp_engine(clock, horizon_s=10)
    seen = _ramp(engine, clock, per_tick=50, ticks=12)
    medium_at = next(size for size, level in seen if level >= Level.MEDIUM)
    assert medium_at <= 600  # projected 10 s ahead: full at 500 + 50 x 10
    assert engine.dominant_signal == "predicted_queue"
    snap = engine.snapshot(clock.now)
    assert snap.signals is not None
    assert snap.signals.queue_forecast.seconds_to_full == pytest.approx((1000 - 600) / 50, rel=0.05)
    # Reactive only (horizon 0): medium only when the queue is full.
    clock = Clock()
    reactive = _ramp_engine(clock, horizon_s=0)
    seen = _ramp(reactive, clock, per_tick=50, ticks=22)
    assert next(size for size, level in seen if level >= Level.MEDIUM) == 1000


def test_the_predicted_level_recovers_when_the_trend_reverses() -> None:
    clock = Clock()
    engine = _ramp_engine(clock, horizon_s=10)
    _ramp(engine, clock, per_tick=50, ticks=10)
    assert engine.level is Level.MEDIUM
    assert engine.dominant_signal == "predicted_queue"
    # The upstream is back and drains 100 a second: the slope turns negative and the level recovers.
    levels = []
    for _ in range(15):
        for msg in engine.take(clock.now, limit=100):
            assert msg is not None
        engine.tick(clock.advance(1), memory_mb=0, cpu_percent=0)
        levels.append(engine.level)
    assert levels[-1] is Level.NONE
    assert reconciles(engine)


def test_a_spike_in_the_queue_does_not_trigger_the_prediction() -> None:
    clock = Clock()
    engine = _ramp_engine(clock, horizon_s=10)
    for t in range(20):
        burst = 600 if t == 10 else 0
        for _ in range(burst):
            engine.offer(Msg(), clock.now, False)
        engine.tick(clock.advance(1), memory_mb=0, cpu_percent=0)
        if burst:
            assert engine.level is Level.NONE  # 60 %: not low yet, and the trend says nothing
        engine.take(clock.now)
    snap = engine.snapshot(clock.now)
    assert snap.predicted_queue_ratio == 0.0
    assert engine.level is Level.NONE


def test_spool_bytes_have_their_own_trend() -> None:
    clock = Clock()
    engine = _ramp_engine(clock, horizon_s=10)
    for t in range(8):
        engine.tick(
            clock.advance(1), memory_mb=0, cpu_percent=0, spool_bytes=10_000 * t, spool_capacity=100_000
        )
    assert engine.level is Level.HIGH  # 70 000 + 10 x 10 000 projected: 170 %
    assert engine.dominant_signal == "predicted_queue"
    snap = engine.snapshot(clock.now)
    assert snap.signals is not None
    assert snap.signals.spool_forecast.seconds_to_full == pytest.approx(3, rel=0.05)
    assert engine.offer(Msg(), clock.now, True).verdict in (Verdict.FORWARD, Verdict.QUEUE, Verdict.DROP)
