"""Adaptive batching: size by level and multiplier, release by size and by delay, batch counting."""

from __future__ import annotations

from typing import Any

import pytest

from policies.batching import batch_size, release_count, size_class_index
from policies.config import Level
from policies.engine import Engine, Verdict
from tests.policies.fakes import Clock, Msg, make_engine, reconciles, tick_load


@pytest.mark.parametrize(
    ("level", "multiplier", "expected"),
    [
        (Level.NONE, 1, 1),
        (Level.LOW, 1, 5),
        (Level.MEDIUM, 1, 10),
        (Level.HIGH, 1, 20),
        (Level.CRITICAL, 1, 50),
        (Level.NONE, 2, 2),
        (Level.LOW, 2, 10),
        (Level.CRITICAL, 2, 100),
        (Level.LOW, 0.5, 3),  # 2.5 rounds half up
        (Level.LOW, 0.1, 1),  # 0.5 rounds up to 1
        (Level.LOW, 0.01, 1),  # never below 1
        (Level.NONE, 1.5, 2),
    ],
)
def test_batch_size(level: Level, multiplier: float, expected: int) -> None:
    assert batch_size(level, multiplier, True) == expected
    assert batch_size(level, multiplier, False) == 1


@pytest.mark.parametrize(
    ("queued", "tokens", "size", "expired", "expected"),
    [
        (3, 100, 5, False, 0),
        (5, 100, 5, False, 5),
        (12, 100, 5, False, 10),  # whole batches only
        (12, 7, 5, False, 5),  # as many whole batches as tokens allow
        (12, 4, 5, False, 0),
        (3, 100, 5, True, 3),  # the delay flushes a partial batch
        (12, 7, 5, True, 7),
        (9, 100, 1, False, 9),
        (9, 4, 1, False, 4),
    ],
)
def test_release_count(queued: int, tokens: int, size: int, expired: bool, expected: int) -> None:
    assert release_count(queued, tokens, size, expired) == expected


@pytest.mark.parametrize(("count", "index"), [(1, 0), (5, 0), (6, 1), (20, 1), (21, 2), (500, 2)])
def test_size_class(count: int, index: int) -> None:
    assert size_class_index(count) == index


def _engine_at_low(clock: Clock, **overrides: Any) -> Engine:
    engine = make_engine(clock, enable_sampling=False, max_batch_delay_ms=20, **overrides)
    tick_load(engine, clock.now, 80)
    assert engine.level is Level.LOW
    return engine


def test_batch_released_when_full() -> None:
    clock = Clock()
    engine = _engine_at_low(clock)
    assert engine.batch_size == 5
    for i in range(4):
        # Batching holds: no direct forward even with an empty queue and can_send.
        assert engine.offer(Msg(f"s{i}"), clock.now, True).verdict == Verdict.QUEUE
        assert engine.take(clock.now) == []
    assert engine.next_deadline() == pytest.approx(clock.now + 0.020)
    engine.offer(Msg("s4"), clock.now, True)
    deadline = engine.next_deadline()
    assert deadline is not None and deadline <= clock.now
    assert [m.subject for m in engine.take(clock.now)] == ["s0", "s1", "s2", "s3", "s4"]
    assert engine.batches_by_subject() == {(f"s{i}", "small"): 1 for i in range(5)}
    assert reconciles(engine)


def test_partial_batch_released_after_the_max_delay() -> None:
    clock = Clock()
    engine = _engine_at_low(clock)
    start = clock.now
    engine.offer(Msg("a"), clock.now, True)
    engine.offer(Msg("b"), clock.advance(0.010), True)
    assert engine.take(clock.advance(0.009)) == []
    assert engine.next_deadline() == pytest.approx(start + 0.020)
    assert [m.subject for m in engine.take(start + 0.020)] == ["a", "b"]
    assert engine.next_deadline() is None


def test_batch_never_holds_a_message_longer_than_the_delay() -> None:
    clock = Clock()
    engine = _engine_at_low(clock, max_publish_rate=1_000_000)
    waited = []
    queued_at: dict[int, float] = {}
    for i in range(1000):
        msg = Msg(f"s{i % 7}")
        queued_at[id(msg)] = clock.now
        engine.offer(msg, clock.now, True)
        deadline = engine.next_deadline()
        clock.advance(0.003)  # one message every 3 ms: batches fill in 15 ms
        if deadline is not None and deadline <= clock.now:
            for out in engine.take(clock.now):
                waited.append(clock.now - queued_at[id(out)])
    assert max(waited) <= 0.020 + 0.003 + 1e-9
    assert reconciles(engine)


def test_batching_off_forwards_directly_at_every_level() -> None:
    clock = Clock()
    engine = make_engine(clock, enable_batching=False, enable_sampling=False)
    tick_load(engine, clock.now, 170)
    assert engine.batch_size == 1
    assert engine.offer(Msg(), clock.now, True).verdict == Verdict.FORWARD


def test_multiplier_applies_at_each_level() -> None:
    clock = Clock()
    engine = make_engine(clock, batch_size_multiplier=2, enable_sampling=False)
    assert engine.batch_size == 2
    tick_load(engine, clock.now, 170)
    assert engine.batch_size == 40


def test_batch_releases_respect_the_rate_ceiling() -> None:
    clock = Clock()
    # Burst 10 tokens, batch 20 at high: only the delay can release, 10 at a time.
    engine = make_engine(clock, enable_sampling=False, max_publish_rate=100, rate_burst_seconds=0.1)
    tick_load(engine, clock.now, 170)
    for _ in range(40):
        engine.offer(Msg(), clock.now, True)
    assert engine.take(clock.now) == []
    assert len(engine.take(clock.advance(0.020))) == 10
    assert engine.take(clock.now) == []
    deadline = engine.next_deadline()
    assert deadline is not None
    assert deadline == pytest.approx(clock.now + 0.010)
    assert len(engine.take(deadline)) == 1


def test_batch_size_classes_are_counted_per_subject_label() -> None:
    clock = Clock()
    engine = make_engine(clock, enable_sampling=False)
    tick_load(engine, clock.now, 250)  # batches of 50
    for i in range(50):
        engine.offer(Msg("big" if i else "one"), clock.now, True)
    assert len(engine.take(clock.now)) == 50
    for _ in range(6):
        engine.offer(Msg("mid"), clock.now, True)
    assert len(engine.take(clock.advance(1))) == 6
    assert engine.batches_by_subject() == {("big", "large"): 1, ("one", "large"): 1, ("mid", "medium"): 1}
