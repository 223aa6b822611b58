"""Messages counted forwarded that the upstream never confirmed: queued again or dropped, books kept."""

from __future__ import annotations

from policies.config import Priority
from policies.engine import REASON_PERMISSIONS, REASON_UPSTREAM_LOST, Engine
from tests.policies.fakes import Clock, Msg, make_engine

LOW, MEDIUM, HIGH, CRITICAL = Priority.LOW, Priority.MEDIUM, Priority.HIGH, Priority.CRITICAL


def books(engine: Engine) -> int:
    return engine.forwarded + engine.dropped + engine.queue_size + engine.spooled


def forwarded(engine: Engine, clock: Clock, *msgs: Msg) -> None:
    for msg in msgs:
        assert engine.offer(msg, clock.now, True).verdict.name == "FORWARD"


def test_high_and_medium_go_back_to_the_head_of_the_queue_low_is_dropped() -> None:
    clock = Clock()
    engine = make_engine(clock, max_queue_size=10)
    lost = [Msg("a", HIGH), Msg("b", MEDIUM), Msg("c", LOW), Msg("d", MEDIUM)]
    forwarded(engine, clock, *lost)
    queued = Msg("e", MEDIUM)
    engine.offer(queued, clock.now, False)  # queued while the upstream was away
    dropped = engine.take_back(lost, clock.advance(1))
    assert [m.subject for m in dropped] == ["c"]
    assert engine.dropped_by_reason() == {REASON_UPSTREAM_LOST: 1}
    assert engine.forwarded == 0 and engine.queue_size == 4
    assert engine.received == books(engine) == 5
    # Oldest first, before what was queued after them; highest priority first as always.
    assert [m.subject for m in engine.drain(clock.now)] == ["a", "b", "d", "e"]
    assert engine.forwarded_by_subject() == {
        ("a", "high"): 1,
        ("b", "medium"): 1,
        ("d", "medium"): 1,
        ("e", "medium"): 1,
    }


def test_taken_back_messages_make_room_by_priority() -> None:
    clock = Clock()
    engine = make_engine(clock, max_queue_size=2)
    lost = [Msg("h1", HIGH), Msg("m1", MEDIUM)]
    forwarded(engine, clock, *lost)
    engine.offer(Msg("q-low", LOW), clock.now, False)
    engine.offer(Msg("q-high", HIGH), clock.now, False)
    dropped = engine.take_back(lost, clock.now)
    # Room is made as for any message, lowest priority first: m1 evicts the queued low one, then h1
    # evicts m1 (both counted queue_full).
    assert sorted(m.subject for m in dropped) == ["m1", "q-low"]
    assert engine.dropped_by_reason() == {"queue_full": 2}
    assert engine.received == books(engine)
    assert [m.subject for m in engine.drain(clock.now)] == ["h1", "q-high"]


def test_no_room_even_by_eviction_is_dropped_upstream_lost() -> None:
    clock = Clock()
    engine = make_engine(clock, max_queue_size=1)
    lost = Msg("m", MEDIUM)
    forwarded(engine, clock, lost)
    engine.offer(Msg("q-high", HIGH), clock.now, False)
    assert engine.take_back([lost], clock.now) == [lost]
    assert engine.dropped_by_reason() == {REASON_UPSTREAM_LOST: 1}
    assert engine.received == books(engine)


def test_without_prioritization_low_is_queued_like_medium() -> None:
    clock = Clock()
    engine = make_engine(clock, enable_prioritization=False)
    msg = Msg("l", LOW)
    forwarded(engine, clock, msg)
    assert engine.take_back([msg], clock.now) == []
    assert engine.queue_size == 1


def test_a_refused_publish_moves_from_forwarded_to_dropped() -> None:
    clock = Clock()
    engine = make_engine(clock)
    forwarded(engine, clock, Msg("secret", MEDIUM), Msg("open", MEDIUM))
    engine.note_refused("secret", MEDIUM)
    assert engine.forwarded == 1 and engine.dropped_by_reason() == {REASON_PERMISSIONS: 1}
    assert engine.received == books(engine)
    assert engine.forwarded_by_subject() == {("open", "medium"): 1}
