"""Priority shedding at high and critical, and what switching prioritization off means."""

from __future__ import annotations

import pytest

from policies.config import Level, Priority
from policies.engine import Decision, Verdict
from tests.policies.fakes import Clock, Msg, make_engine, reconciles, tick_load


@pytest.mark.parametrize(
    ("load", "level", "shed"),
    [
        (0, Level.NONE, False),
        (80, Level.LOW, False),
        (120, Level.MEDIUM, False),
        (170, Level.HIGH, True),
        (250, Level.CRITICAL, True),
    ],
)
@pytest.mark.parametrize("is_request", [False, True])
def test_low_priority_dropped_at_high_and_critical(
    load: float, level: Level, shed: bool, is_request: bool
) -> None:
    clock = Clock()
    engine = make_engine(clock, enable_sampling=False, max_queue_size=10_000)
    tick_load(engine, clock.now, load)
    assert engine.level is level
    decision = engine.offer(Msg(priority=Priority.LOW, is_request=is_request), clock.now, True)
    if shed:
        assert decision == Decision(Verdict.DROP, "low_priority")
        assert engine.dropped_by_subject() == {("low_priority", "kpi.test"): 1}
    else:
        assert decision.verdict in (Verdict.FORWARD, Verdict.QUEUE)
    for priority in (Priority.MEDIUM, Priority.HIGH, Priority.CRITICAL):
        assert engine.offer(Msg(priority=priority), clock.now, True).verdict in (
            Verdict.FORWARD,
            Verdict.QUEUE,
        )
    assert reconciles(engine)


def test_prioritization_off_sheds_nothing_by_priority() -> None:
    clock = Clock()
    engine = make_engine(clock, enable_sampling=False, enable_prioritization=False, max_queue_size=10_000)
    tick_load(engine, clock.now, 250)
    for _ in range(100):
        assert engine.offer(Msg(priority=Priority.LOW), clock.now, True).verdict == Verdict.QUEUE
    assert engine.dropped == 0


def test_prioritization_off_samples_and_drops_critical_like_medium() -> None:
    clock = Clock()
    engine = make_engine(clock, enable_prioritization=False, max_queue_size=3)
    tick_load(engine, clock.now, 250)
    decisions = [engine.offer(Msg(priority=Priority.CRITICAL), clock.now, False) for _ in range(200)]
    assert any(d.reason == "sampling" for d in decisions)
    # No eviction (every message has the same priority) and no BLOCK: a full queue drops.
    assert all(d.verdict != Verdict.BLOCK and not d.evicted for d in decisions)
    assert engine.dropped_by_reason().get("queue_full", 0) > 0
    assert reconciles(engine)


def test_prioritization_off_queue_is_fifo_across_priorities() -> None:
    clock = Clock()
    engine = make_engine(clock, enable_prioritization=False)
    order = [Msg("a", Priority.LOW), Msg("b", Priority.CRITICAL), Msg("c", Priority.HIGH)]
    for msg in order:
        engine.offer(msg, clock.now, False)
    assert engine.snapshot(clock.now).queue_by_priority == {"low": 0, "medium": 3, "high": 0, "critical": 0}
    assert engine.take(clock.now) == order
    # Forwards keep the declared priority as their label.
    assert engine.forwarded_by_subject() == {("a", "low"): 1, ("b", "critical"): 1, ("c", "high"): 1}


def test_prioritization_on_releases_by_priority() -> None:
    clock = Clock()
    engine = make_engine(clock)
    msgs = [
        Msg("a", Priority.LOW),
        Msg("b", Priority.CRITICAL),
        Msg("c", Priority.HIGH),
        Msg("d", Priority.MEDIUM),
    ]
    for msg in msgs:
        engine.offer(msg, clock.now, False)
    assert [m.subject for m in engine.take(clock.now)] == ["b", "c", "d", "a"]
