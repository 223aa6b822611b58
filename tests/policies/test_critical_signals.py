"""What the operations alerts read from the engine: the oldest critical message's age, critical drops."""

from __future__ import annotations

from policies.config import Priority
from policies.engine import CRITICAL_DROP_REASONS, Verdict
from tests.policies.fakes import Clock, Msg, make_engine, reconciles

M, C = Priority.MEDIUM, Priority.CRITICAL


def test_oldest_critical_age_follows_the_oldest_critical_message_only() -> None:
    clock = Clock()
    engine = make_engine(clock)
    assert engine.oldest_queued_age_of(C, clock.now) == 0.0
    engine.offer(Msg("a", M), clock.now, False)
    clock.advance(3)
    assert engine.oldest_queued_age_of(C, clock.now) == 0.0  # a medium message does not count
    engine.offer(Msg("c1", C), clock.now, False)
    clock.advance(2)
    engine.offer(Msg("c2", C), clock.now, False)
    clock.advance(5)
    assert engine.oldest_queued_age_of(C, clock.now) == 7.0
    assert engine.oldest_queued_age_of(M, clock.now) == 10.0
    # Highest priority first: the two critical messages leave, the medium one stays.
    assert [m.subject for m in engine.take(clock.now, 2)] == ["c1", "c2"]
    assert engine.oldest_queued_age_of(C, clock.now) == 0.0


def test_critical_drops_are_counted_by_reason_from_zero() -> None:
    clock = Clock()
    engine = make_engine(clock)
    assert engine.critical_dropped_by_reason() == dict.fromkeys(CRITICAL_DROP_REASONS, 0)
    # Queued, then dropped by the shell because the new upstream's max_payload is smaller.
    big = Msg("pay", C, size=5000)
    assert engine.offer(big, clock.now, False).verdict is Verdict.QUEUE
    engine.offer(Msg("m", M, size=5000), clock.now, False)
    assert len(engine.drop_queued(lambda m: m.size > 1024, "max_payload")) == 2
    # A BLOCKed critical message the shell could not spool at shutdown.
    blocked = Msg("pay", C)
    engine.note_dropped(blocked, "shutdown")
    # A spooled one (from an earlier process) that can no longer be sent.
    engine.note_spool_dropped(Msg("pay", C), "max_payload")
    assert engine.critical_dropped_by_reason() == {"max_payload": 2, "shutdown": 1}
    assert reconciles(engine)


def test_without_prioritization_nothing_counts_as_a_critical_drop() -> None:
    clock = Clock()
    engine = make_engine(clock, enable_prioritization=False)
    engine.offer(Msg("pay", C, size=5000), clock.now, False)
    engine.drop_queued(lambda m: True, "max_payload")
    assert engine.critical_dropped_by_reason() == {"max_payload": 0, "shutdown": 0}
