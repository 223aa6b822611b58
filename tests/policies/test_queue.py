"""The bounded priority queue: admission, eviction order, BLOCK, take order, clear, drain, shutdown."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from policies.config import Priority
from policies.engine import Decision, Engine, Verdict
from policies.queue import PriorityQueue
from tests.policies.fakes import Clock, Msg, make_engine, reconciles

L, M, H, C = Priority.LOW, Priority.MEDIUM, Priority.HIGH, Priority.CRITICAL


def _full_engine(clock: Clock, contents: list[Msg], **overrides: Any) -> Engine:
    # A filling queue raises the level at once (sampling, batching): held still, these tests are about
    # the queue's own order.
    overrides = {"enable_sampling": False, "enable_batching": False, **overrides}
    engine = make_engine(clock, max_queue_size=len(contents), **overrides)
    for msg in contents:
        assert engine.offer(msg, clock.now, False) == Decision(Verdict.QUEUE)
    return engine


@pytest.mark.parametrize(
    ("queued", "new", "evicted"),
    [
        # The oldest of the lowest priority strictly below the newcomer's goes.
        ([("l1", L), ("m1", M), ("l2", L)], ("h", H), "l1"),
        ([("m1", M), ("l1", L), ("m2", M)], ("c", C), "l1"),
        ([("m1", M), ("h1", H), ("m2", M)], ("h", H), "m1"),
        ([("h1", H), ("m1", M), ("c1", C)], ("c", C), "m1"),
        ([("h1", H), ("h2", H), ("c1", C)], ("c", C), "h1"),
        ([("l1", L), ("l2", L)], ("m", M), "l1"),
    ],
)
def test_eviction_order(queued: list[tuple[str, Priority]], new: tuple[str, Priority], evicted: str) -> None:
    clock = Clock()
    msgs = [Msg(s, p) for s, p in queued]
    engine = _full_engine(clock, msgs)
    decision = engine.offer(Msg(*new), clock.now, False)
    assert decision.verdict == Verdict.QUEUE
    assert [m.subject for m in decision.evicted] == [evicted]
    assert engine.dropped_by_subject() == {("queue_full", evicted): 1}
    assert engine.queue_size == len(queued)
    assert reconciles(engine)


@pytest.mark.parametrize(
    ("queued", "new"),
    [
        ([("m1", M), ("m2", M)], ("m", M)),  # nothing strictly lower
        ([("h1", H), ("c1", C)], ("m", M)),
        ([("l1", L)], ("l", L)),
        ([("c1", C), ("c2", C)], ("h", H)),
    ],
)
def test_full_queue_drops_the_newcomer_when_nothing_lower_can_go(
    queued: list[tuple[str, Priority]], new: tuple[str, Priority]
) -> None:
    clock = Clock()
    engine = _full_engine(clock, [Msg(s, p) for s, p in queued])
    assert engine.offer(Msg(*new), clock.now, False) == Decision(Verdict.DROP, "queue_full")
    assert engine.dropped_by_subject() == {("queue_full", new[0]): 1}
    assert reconciles(engine)


def test_critical_is_never_evicted_and_blocks_when_the_queue_is_all_critical() -> None:
    clock = Clock()
    engine = _full_engine(clock, [Msg(f"c{i}", C) for i in range(3)])
    before = (engine.received, engine.dropped)
    assert engine.offer(Msg("c", C), clock.now, False) == Decision(Verdict.BLOCK)
    # Not counted at all until the shell says what it did with it.
    assert (engine.received, engine.dropped) == before
    assert reconciles(engine)
    for priority in (L, M, H):
        assert engine.offer(Msg("x", priority), clock.now, False).reason == "queue_full"
    assert [m.subject for m in engine.take(clock.now)] == ["c0", "c1", "c2"]


def test_blocked_message_spooled_then_replayed_reconciles() -> None:
    clock = Clock()
    engine = _full_engine(clock, [Msg("c0", C)])
    blocked = Msg("c1", C)
    assert engine.offer(blocked, clock.now, False).verdict == Verdict.BLOCK
    engine.note_spooled(blocked)
    assert (engine.received, engine.spooled) == (2, 1)
    assert reconciles(engine)
    engine.note_unspooled(blocked)
    assert (engine.spooled, engine.forwarded) == (0, 1)
    assert reconciles(engine)


def test_critical_evicts_lower_priority_even_in_a_mostly_critical_queue() -> None:
    clock = Clock()
    engine = _full_engine(clock, [Msg("c0", C), Msg("l0", L), Msg("c1", C)])
    decision = engine.offer(Msg("c2", C), clock.now, False)
    assert [m.subject for m in decision.evicted] == ["l0"]
    assert engine.snapshot(clock.now).queue_by_priority == {"low": 0, "medium": 0, "high": 0, "critical": 3}


def test_take_pops_critical_first_and_fifo_within_a_priority() -> None:
    clock = Clock()
    engine = make_engine(clock)
    subjects = [("l1", L), ("h1", H), ("m1", M), ("c1", C), ("h2", H), ("l2", L), ("c2", C), ("m2", M)]
    for s, p in subjects:
        engine.offer(Msg(s, p), clock.advance(0.001), False)
    assert [m.subject for m in engine.take(clock.now)] == ["c1", "c2", "h1", "h2", "m1", "m2", "l1", "l2"]
    assert engine.forwarded == 8
    assert reconciles(engine)


def test_forward_only_when_can_send_and_queue_empty() -> None:
    clock = Clock()
    engine = make_engine(clock)
    assert engine.offer(Msg(), clock.now, False) == Decision(Verdict.QUEUE)
    # Something is queued: a newcomer must not overtake it.
    assert engine.offer(Msg(), clock.now, True) == Decision(Verdict.QUEUE)
    assert len(engine.take(clock.now)) == 2
    assert engine.offer(Msg(), clock.now, True) == Decision(Verdict.FORWARD)
    assert engine.forwarded == 3


def test_clear_removes_non_critical_and_counts_them() -> None:
    clock = Clock()
    engine = make_engine(clock)
    for s, p in [("l", L), ("c", C), ("m", M), ("h", H)]:
        engine.offer(Msg(s, p), clock.now, False)
    removed = engine.clear()
    assert sorted(m.subject for m in removed) == ["h", "l", "m"]
    assert engine.queue_size == 1
    assert engine.dropped_by_reason() == {"cleared": 3}
    assert reconciles(engine)
    assert [m.subject for m in engine.take(clock.now)] == ["c"]


def test_drain_ignores_the_rate_ceiling_and_batching() -> None:
    clock = Clock()
    engine = make_engine(
        clock, max_publish_rate=1, rate_burst_seconds=1, enable_batching=False, enable_sampling=False
    )
    for _ in range(50):
        engine.offer(Msg(), clock.now, False)
    assert len(engine.take(clock.now)) == 1
    assert len(engine.drain(clock.now)) == 49
    assert engine.queue_size == 0
    assert engine.forwarded == 50
    assert reconciles(engine)


@pytest.mark.parametrize("fate", ["forwarded", "spooled", "dropped"])
def test_shutdown_hand_off_stays_counted_until_settled(fate: str) -> None:
    clock = Clock()
    engine = make_engine(clock)
    for p in (L, C, M):
        engine.offer(Msg(priority=p), clock.now, False)
    items = engine.drain_all_for_shutdown()
    assert [m.priority for m in items] == [C, M, L]
    assert engine.queue_size == 3  # handed off but not yet settled
    assert reconciles(engine)
    for item in items:
        if fate == "forwarded":
            engine.note_forwarded(item)
        elif fate == "spooled":
            engine.note_spooled(item)
        else:
            engine.note_dropped(item, "shutdown")
        assert reconciles(engine)
    assert engine.queue_size == 0
    assert engine.received == 3
    assert getattr(engine, fate) == 3


def test_spool_replay_from_a_previous_process_reconciles() -> None:
    clock = Clock()
    engine = make_engine(clock)
    engine.note_unspooled(Msg())
    engine.note_spool_dropped(Msg(), "expired")
    assert (engine.received, engine.forwarded, engine.dropped, engine.spooled) == (2, 1, 1, 0)
    assert reconciles(engine)


def test_priority_queue_bytes_and_oldest() -> None:
    queue = PriorityQueue()
    queue.push(Msg(priority=M, size=10), M, 5.0)
    queue.push(Msg(priority=C, size=20), C, 6.0)
    queue.push(Msg(priority=L, size=30), L, 4.0)
    assert (queue.size, queue.nbytes, queue.oldest_time()) == (3, 60, 4.0)
    assert queue.pop().priority is C
    evicted = queue.evict_below(H)
    assert evicted is not None and evicted.priority is L
    assert (queue.size, queue.nbytes, queue.oldest_time()) == (1, 10, 5.0)
    assert queue.evict_below(M) is None
    assert queue.pop_all()[0].size == 10
    assert (queue.size, queue.nbytes, queue.oldest_time()) == (0, 0, None)


def test_shrinking_max_queue_size_keeps_what_is_queued() -> None:
    clock = Clock()
    engine = make_engine(clock, max_queue_size=10, enable_sampling=False)
    for _ in range(10):
        engine.offer(Msg(priority=L), clock.now, False)
    engine.update_config(msgspec.structs.replace(engine.config, max_queue_size=5), now=clock.now)
    assert engine.queue_size == 10
    decision = engine.offer(Msg(priority=H), clock.now, False)
    assert len(decision.evicted) == 1
    assert engine.queue_size == 10
    assert reconciles(engine)
