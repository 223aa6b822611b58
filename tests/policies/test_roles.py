"""Protocol roles: classification, the reply memory, and what each role is spared at every level."""

from __future__ import annotations

import pytest

from policies.accounting import LABEL_IDLE_S, OTHER_LABEL
from policies.config import Level, Priority
from policies.engine import Verdict
from policies.roles import ReplyMemory, Role, role_of, subject_role
from tests.policies.fakes import Clock, Msg, make_engine, reconciles, tick_load

LEVEL_LOADS = {Level.NONE: 0, Level.LOW: 80, Level.MEDIUM: 120, Level.HIGH: 170, Level.CRITICAL: 250}


@pytest.mark.parametrize(
    ("subject", "has_reply", "role"),
    [
        ("$JS.ACK.ORDERS.worker.1.2.3.1700000000.0", False, Role.CONTROL),  # +ACK, -NAK, +WPI, +TERM
        ("$JS.ACK.ORDERS.worker.1.2.3.1700000000.0", True, Role.CONTROL),  # ack_sync: still control
        ("$JS.ACK.hub.ABCDEF.ORDERS.worker.1.2.3.4.5.6", False, Role.CONTROL),  # with a domain
        ("$JS.FC.ORDERS.abc.XYZ", False, Role.CONTROL),
        ("_INBOX.abc.def", False, Role.REPLY),
        ("_INBOX.abc.def", True, Role.REPLY),
        ("$JS.API.STREAM.INFO.ORDERS", True, Role.REQUEST),
        ("$JS.API.CONSUMER.MSG.NEXT.ORDERS.puller", True, Role.REQUEST),
        ("$KV.cfg.key", True, Role.REQUEST),
        ("svc.echo", True, Role.REQUEST),
        ("$SRV.PING", True, Role.REQUEST),
        ("kpi.orders", False, Role.DATA),
        ("$JS.API.STREAM.INFO.ORDERS", False, Role.DATA),
        ("_INBOXED.x", False, Role.DATA),
        ("$JS.ACKS", False, Role.DATA),
    ],
)
def test_role_of(subject: str, has_reply: bool, role: Role) -> None:
    assert role_of(subject, has_reply) is role


def test_a_reply_to_a_custom_inbox_is_known_by_what_was_delivered() -> None:
    clock = Clock()
    memory = ReplyMemory(size=3, ttl_s=10)
    assert role_of("my.inbox.1", False, memory, clock.now) is Role.DATA
    memory.remember("my.inbox.1", clock.now)
    assert subject_role("my.inbox.1") is None
    assert role_of("my.inbox.1", False, memory, clock.now) is Role.REPLY
    assert role_of("my.inbox.1", True, memory, clock.advance(9.9)) is Role.REPLY
    assert role_of("my.inbox.1", True, memory, clock.advance(0.1)) is Role.REQUEST  # expired
    assert len(memory) == 0


def test_the_reply_memory_is_bounded_oldest_first() -> None:
    memory = ReplyMemory(size=100, ttl_s=60)
    for i in range(1000):
        memory.remember(f"r.{i}", 0.0)
    assert len(memory) == 100
    assert not memory.contains("r.899", 1.0)
    assert memory.contains("r.900", 1.0) and memory.contains("r.999", 1.0)
    memory.remember("r.900", 2.0)  # delivered again: youngest
    memory.remember("r.new", 2.0)
    assert memory.contains("r.900", 3.0) and not memory.contains("r.901", 3.0)


@pytest.mark.parametrize("level", list(Level))
@pytest.mark.parametrize("role", [Role.REPLY, Role.CONTROL])
@pytest.mark.parametrize("priority", [Priority.LOW, Priority.MEDIUM])
def test_replies_and_control_are_never_shed_at_any_level(
    level: Level, role: Role, priority: Priority
) -> None:
    clock = Clock()
    engine = make_engine(clock, breaker_critical_top_subjects=3)
    subject = "_INBOX.x.y" if role is Role.REPLY else "$JS.ACK.S.c.1.1.1.1.0"
    tick_load(engine, clock.now, LEVEL_LOADS[level])
    assert engine.level is level
    for _ in range(2000):
        decision = engine.offer(Msg(subject, priority, role=role), clock.advance(0.0001), True)
        assert decision.verdict is Verdict.FORWARD
        engine.take(clock.now)
    tick_load(engine, clock.now, LEVEL_LOADS[level])
    assert engine.dropped == 0
    assert engine.breakers() == []
    assert reconciles(engine)


def test_replies_are_not_part_of_the_publish_rate_signal() -> None:
    clock = Clock()
    engine = make_engine(clock, max_publish_rate=1000)
    for i in range(5000):
        engine.offer(Msg(f"_INBOX.a.{i}", role=Role.REPLY), clock.advance(0.0002), True)
    tick_load(engine, clock.now, 0)
    assert engine.level is Level.NONE
    assert engine.snapshot(clock.now).publish_rate == 0.0
    assert engine.forwarded == 5000


def test_replies_go_ahead_of_queued_data_without_waiting_for_tokens() -> None:
    clock = Clock()
    engine = make_engine(clock, max_publish_rate=10, rate_burst_seconds=0.1, enable_batching=False)
    for i in range(5):
        engine.offer(Msg(f"kpi.bulk.{i}", Priority.HIGH), clock.now, False)
    engine.offer(Msg("_INBOX.r.1", Priority.LOW, role=Role.REPLY), clock.now, False)
    engine.offer(Msg("$JS.ACK.s.c.1", Priority.LOW, role=Role.CONTROL), clock.now, False)
    out = engine.take(clock.now)
    assert [m.subject for m in out] == ["_INBOX.r.1", "$JS.ACK.s.c.1"]  # the one token is in debt now
    # With the upstream up, a reply goes at once even while data waits for tokens.
    assert engine.offer(Msg("_INBOX.r.2", role=Role.REPLY), clock.now, True).verdict is Verdict.FORWARD
    assert engine.queue_size == 5
    assert reconciles(engine)


def test_critical_messages_still_go_before_replies() -> None:
    clock = Clock()
    engine = make_engine(clock, enable_batching=False)
    engine.offer(Msg("_INBOX.r", role=Role.REPLY), clock.now, False)
    engine.offer(Msg("kpi.pay", Priority.CRITICAL), clock.now, False)
    engine.offer(Msg("_INBOX.crit", Priority.CRITICAL, role=Role.REPLY), clock.now, False)
    assert {m.subject for m in engine.take(clock.now)} == {"_INBOX.r", "kpi.pay", "_INBOX.crit"}


def test_requests_go_ahead_of_data_of_their_priority_and_never_wait_for_a_batch() -> None:
    clock = Clock()
    engine = make_engine(clock, max_publish_rate=10, rate_burst_seconds=0.1, max_batch_delay_ms=1000)
    tick_load(engine, clock.now, 80)  # low: batches of 5
    for i in range(3):
        engine.offer(Msg(f"kpi.bulk.{i}"), clock.now, True)
    assert engine.take(clock.now) == []  # a partial batch waits for the delay
    engine.offer(Msg("svc.req", is_request=True), clock.now, True)
    assert [m.subject for m in engine.take(clock.now)] == ["svc.req"]  # one token: the request
    assert engine.next_deadline() == pytest.approx(clock.now + 1.0)  # the data: its batch delay


def test_a_request_is_never_sampled_but_a_low_one_is_shed_at_high() -> None:
    clock = Clock()
    engine = make_engine(clock, enable_batching=False)
    tick_load(engine, clock.now, 250)
    for _ in range(500):
        assert engine.offer(Msg("svc.x", is_request=True), clock.now, True).verdict is Verdict.FORWARD
    assert engine.offer(Msg("svc.x", Priority.LOW, is_request=True), clock.now, True).reason == "low_priority"


def test_replies_are_never_evicted_and_evict_data() -> None:
    clock = Clock()
    engine = make_engine(clock, max_queue_size=3, enable_sampling=False, enable_batching=False)
    engine.offer(Msg("kpi.a", Priority.HIGH), clock.now, False)
    engine.offer(Msg("_INBOX.1", Priority.LOW, role=Role.REPLY), clock.now, False)
    engine.offer(Msg("_INBOX.2", Priority.LOW, role=Role.REPLY), clock.now, False)
    decision = engine.offer(Msg("_INBOX.3", Priority.LOW, role=Role.REPLY), clock.now, False)
    assert [m.subject for m in decision.evicted] == ["kpi.a"]
    # Full of replies: a critical message does not evict them (BLOCK: the shell spools it).
    assert engine.offer(Msg("kpi.pay", Priority.CRITICAL), clock.now, False).verdict is Verdict.BLOCK
    assert engine.offer(Msg("_INBOX.4", role=Role.REPLY), clock.now, False).reason == "queue_full"
    assert engine.clear() == []
    assert reconciles(engine)


def test_replies_and_control_are_counted_under_fixed_labels() -> None:
    clock = Clock()
    engine = make_engine(clock, max_subjects=10)
    for i in range(600):
        engine.offer(Msg(f"_INBOX.abc.{i}", role=Role.REPLY), clock.now, True)
        engine.offer(Msg(f"$JS.ACK.S.c.1.{i}.1.1.0", role=Role.CONTROL), clock.now, True)
    engine.offer(Msg("svc.echo", is_request=True), clock.now, True)
    engine.offer(Msg("svc.echo"), clock.now, True)
    assert engine.forwarded_by_subject_role() == {
        ("_reply", "medium", "reply"): 600,
        ("_control", "medium", "control"): 600,
        ("svc.echo", "medium", "request"): 1,
        ("svc.echo", "medium", "data"): 1,
    }
    roles = engine.snapshot(clock.now).by_role
    assert roles["reply"] == {"received": 600, "forwarded": 600, "dropped": 0}
    assert roles["request"]["forwarded"] == 1


def test_the_label_budget_follows_current_traffic() -> None:
    clock = Clock()
    engine = make_engine(clock, max_subjects=100)
    for i in range(100):
        engine.offer(Msg(f"kpi.old.{i}"), clock.now, True)
    engine.offer(Msg("kpi.new"), clock.now, True)
    assert ("kpi.new", "medium") not in engine.forwarded_by_subject()
    # The old subjects go quiet but one; a minute later their labels are freed.
    for _ in range(int(LABEL_IDLE_S) + 1):
        engine.offer(Msg("kpi.old.7"), clock.now, True)
        tick_load(engine, clock.advance(1), 0)
    engine.offer(Msg("kpi.new"), clock.now, True)
    labels = {label for label, _ in engine.forwarded_by_subject()}
    assert {"kpi.new", "kpi.old.7", OTHER_LABEL} <= labels
    assert "kpi.old.8" not in labels
    forwarded, _ = engine.freed_by_labels()
    assert sum(engine.forwarded_by_subject().values()) + forwarded == engine.forwarded


def test_failures_on_reply_subjects_never_make_breakers() -> None:
    clock = Clock()
    engine = make_engine(clock, breaker_failure_threshold=1)
    for i in range(50):
        engine.breaker_failure(f"_INBOX.x.{i}", clock.now)
        engine.breaker_failure(f"$JS.ACK.s.c.{i}", clock.now)
    assert engine.breakers() == []
