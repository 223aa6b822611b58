"""hold_critical: the PubAck window is full, so critical messages wait in the queue and the rest goes on.

Before, a full window held the whole upstream connection (the shell stopped every write): a stream that
stopped answering stalled every application's data and replies behind its critical messages.
"""

from __future__ import annotations

from policies.config import Priority
from policies.engine import Verdict
from policies.roles import Role
from tests.policies.fakes import Clock, Msg, make_engine

CRITICAL, MEDIUM = Priority.CRITICAL, Priority.MEDIUM


def test_critical_messages_wait_while_the_rest_is_forwarded_and_released() -> None:
    clock = Clock()
    engine = make_engine(clock, max_queue_size=1000)
    engine.hold_critical = True
    assert engine.offer(Msg("pay.in", CRITICAL), clock.now, True).verdict is Verdict.QUEUE
    # Queued critical messages do not stop the others, at once or from the queue.
    medium = [Msg("data.x", MEDIUM) for _ in range(3)]
    verdicts = [engine.offer(m, clock.now, True).verdict for m in medium]
    assert verdicts[0] in (Verdict.FORWARD, Verdict.QUEUE)
    released = engine.take(clock.advance(0.1))
    assert [m for m in released if m.priority is CRITICAL] == []
    assert engine.queue_size == 1
    assert engine.next_deadline() is None  # nothing to do until the PubAcks lift the hold
    reply = Msg("_INBOX.r", CRITICAL, role=Role.REPLY)
    assert engine.offer(reply, clock.now, True).verdict is Verdict.QUEUE
    assert engine.forward_batch([("data.y", 5, MEDIUM, Role.DATA)], 5, clock.now, True)
    assert engine.decide_run([("pay.in", 5, CRITICAL, Role.DATA)], clock.now, True) is None
    # PubAcks came back: the critical messages leave first.
    engine.hold_critical = False
    released = engine.take(clock.advance(0.1))
    assert [m.priority for m in released] == [CRITICAL, CRITICAL]
    assert engine.queue_size == 0


def test_without_prioritization_the_hold_covers_every_message() -> None:
    # Critical messages are not told apart in the queue then: nothing leaves while the window is full.
    clock = Clock()
    engine = make_engine(clock, max_queue_size=1000, enable_prioritization=False)
    engine.hold_critical = True
    assert engine.offer(Msg("pay.in", CRITICAL), clock.now, True).verdict is Verdict.QUEUE
    assert engine.offer(Msg("data.x", MEDIUM), clock.now, True).verdict is Verdict.QUEUE
    assert engine.take(clock.advance(0.1)) == []
    assert engine.next_deadline() is None
    engine.hold_critical = False
    assert [m.subject for m in engine.take(clock.advance(0.1))] == ["pay.in", "data.x"]
