"""The publish-rate ceiling (token bucket) and the incoming-rate meter, over simulated time."""

from __future__ import annotations

import math

import pytest

from policies.rate import RateMeter, TokenBucket
from tests.policies.fakes import Clock, Msg, make_engine


def test_bucket_starts_full_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=100, burst=10, now=0.0)
    assert sum(bucket.try_take(0.0) for _ in range(20)) == 10
    assert not bucket.try_take(0.0)
    assert not bucket.try_take(0.009)
    assert bucket.try_take(0.0101)
    # Idle time never earns more than the burst.
    assert sum(bucket.try_take(100.0) for _ in range(50)) == 10


def test_bucket_time_for() -> None:
    bucket = TokenBucket(rate=100, burst=10, now=0.0)
    assert bucket.time_for(1) == 0.0
    bucket.take(10)
    assert bucket.time_for(1) == pytest.approx(0.01)
    assert bucket.time_for(5) == pytest.approx(0.05)
    assert bucket.time_for(11) == math.inf


@pytest.mark.parametrize(("rate", "burst_s"), [(100, 0.1), (1000, 0.1), (50, 1.0), (5, 0.01)])
def test_engine_forwards_at_most_the_rate_ceiling(rate: float, burst_s: float) -> None:
    clock = Clock()
    # Sampling off: offered at 4x the ceiling, the level is critical within the first second.
    engine = make_engine(
        clock,
        max_publish_rate=rate,
        rate_burst_seconds=burst_s,
        max_queue_size=1_000_000,
        enable_sampling=False,
        enable_batching=False,
    )
    burst = max(1.0, rate * burst_s)
    seconds = 10
    step = 1 / (rate * 4)  # offered at 4x the ceiling
    forwarded = 0
    for _ in range(int(seconds / step)):
        clock.advance(step)
        if engine.offer(Msg(), clock.now, True).verdict == 0:
            forwarded += 1
        forwarded += len(engine.take(clock.now))
    assert forwarded == engine.forwarded
    assert rate * seconds <= forwarded <= rate * seconds + burst + 1


def test_queued_work_waits_for_the_next_token_and_next_deadline_says_when() -> None:
    clock = Clock()
    engine = make_engine(clock, max_publish_rate=10, rate_burst_seconds=0.1)  # burst 1
    assert engine.offer(Msg(), clock.now, True).verdict == 0
    assert engine.offer(Msg(), clock.now, True).verdict == 1
    assert engine.take(clock.now) == []
    deadline = engine.next_deadline()
    assert deadline is not None
    assert deadline == pytest.approx(clock.now + 0.1)
    assert engine.take(deadline - 0.001) == []
    assert len(engine.take(deadline)) == 1
    assert engine.next_deadline() is None


def test_meter_reads_a_steady_rate() -> None:
    meter = RateMeter(window_s=1.0, now=0.0)
    t = 0.0
    for _ in range(5000):  # 1000/s for 5 s
        t += 0.001
        meter.add(t)
    assert meter.rate(t) == pytest.approx(1000, rel=0.02)


def test_meter_forgets_after_the_window() -> None:
    meter = RateMeter(window_s=1.0, now=0.0)
    for i in range(1000):
        meter.add(i / 1000)
    assert meter.rate(1.0) == pytest.approx(1000, rel=0.1)
    assert meter.rate(1.55) == pytest.approx(450, rel=0.25)
    assert meter.rate(2.2) == 0.0
    assert meter.rate(100.0) == 0.0


def test_meter_reads_low_not_high_just_after_start() -> None:
    meter = RateMeter(window_s=1.0, now=0.0)
    for _ in range(10):
        meter.add(0.001)
    assert meter.rate(0.001) <= 10 / 0.9


@pytest.mark.parametrize("window_ms", [100, 1000, 5000])
def test_incoming_rate_signal_counts_offers_not_forwards(window_ms: int) -> None:
    clock = Clock()
    # Nothing takes from the queue here: its standing delay (queue_delay) would win; off for this test.
    engine = make_engine(
        clock,
        max_publish_rate=100,
        publish_rate_window_ms=window_ms,
        max_queue_size=10,
        queue_delay_target_ms=0,
    )
    seconds = 2 * window_ms / 1000
    for _ in range(int(300 * seconds)):  # 300/s offered, most of them dropped or queued
        engine.offer(Msg(), clock.advance(1 / 300), True)
    engine.tick(clock.now, memory_mb=0, cpu_percent=0)
    assert engine.dominant_signal == "publish_rate"
    assert engine.load_percent == pytest.approx(300, rel=0.05)
