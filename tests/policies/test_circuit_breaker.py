"""Per-subject circuit breakers: failures, half-open trials, backoff, manual control, critical level."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from policies.circuit_breaker import BreakerState
from policies.config import Level, Priority
from policies.engine import Decision, Engine, Verdict
from policies.roles import Role
from policies.sampling import APART, PARKED
from tests.policies.fakes import Clock, Msg, make_engine, reconciles, tick_load

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
S = "kpi.payment.conversion"


def _engine(clock: Clock, **overrides: Any) -> Engine:
    settings: dict[str, Any] = {
        "breaker_failure_threshold": 3,
        "breaker_half_open_successes": 2,
        "breaker_half_open_fraction": 0.5,
        "recovery_delay_ms": 5000,
        "max_backoff_ms": 30_000,
        "enable_batching": False,
    }
    settings.update(overrides)
    return make_engine(clock, **settings)


def _open_by_failures(engine, clock: Clock, subject: str = S) -> None:
    for _ in range(3):
        engine.breaker_failure(subject, clock.now)
    assert engine.breaker_state(subject) is OPEN


def test_consecutive_failures_open_the_breaker() -> None:
    clock = Clock()
    engine = _engine(clock)
    engine.breaker_failure(S, clock.now)
    engine.breaker_failure(S, clock.now)
    assert engine.breaker_state(S) is CLOSED
    engine.breaker_success(S, clock.now)  # not consecutive any more: forgotten
    assert engine.breakers() == []
    engine.breaker_failure(S, clock.now)
    engine.breaker_failure(S, clock.now)
    assert engine.breakers()[0].failures == 2
    engine.breaker_failure(S, clock.now)
    snapshot = engine.breakers()[0]
    assert (snapshot.state, snapshot.reason, snapshot.opened_at) == ("open", "failures", clock.now)
    assert snapshot.next_attempt_at == clock.now + 5.0
    assert snapshot.backoff_ms == 5000


def test_open_breaker_drops_non_critical_and_parks_critical() -> None:
    clock = Clock()
    engine = _engine(clock)
    _open_by_failures(engine, clock)
    for priority in (Priority.LOW, Priority.MEDIUM, Priority.HIGH):
        assert engine.offer(Msg(S, priority), clock.now, True) == Decision(Verdict.DROP, "circuit_breaker")
    assert engine.offer(Msg(S, Priority.MEDIUM, is_request=True), clock.now, True).reason == "circuit_breaker"
    critical = Msg(S, Priority.CRITICAL)
    assert engine.offer(critical, clock.now, True) == Decision(Verdict.QUEUE)
    # Other subjects are unaffected.
    assert engine.offer(Msg("kpi.other"), clock.now, True).verdict == Verdict.FORWARD
    # The parked critical message waits while the breaker is open.
    assert engine.take(clock.now) == []
    assert engine.queue_size == 1
    assert engine.snapshot(clock.now).parked == 1
    assert reconciles(engine)
    tick_load(engine, clock.advance(5.0), 0)
    assert engine.breaker_state(S) is HALF_OPEN
    assert engine.take(clock.now) == [critical]
    assert reconciles(engine)


def test_half_open_after_the_delay_lets_a_fraction_through() -> None:
    clock = Clock()
    engine = _engine(clock, breaker_half_open_fraction=0.1)
    _open_by_failures(engine, clock)
    assert engine.offer(Msg(S), clock.advance(4.999), True).reason == "circuit_breaker"
    clock.advance(0.001)
    passed = sum(engine.offer(Msg(S), clock.now, True).verdict == Verdict.FORWARD for _ in range(10_000))
    assert engine.breaker_state(S) is HALF_OPEN
    assert 850 <= passed <= 1150
    assert engine.dropped_by_reason()["circuit_breaker"] == 10_000 - passed + 1


def test_half_open_critical_messages_pass_outside_the_trial_draw() -> None:
    clock = Clock()
    engine = _engine(clock, breaker_half_open_fraction=0.01)
    _open_by_failures(engine, clock)
    tick_load(engine, clock.advance(5), 0)
    assert all(
        engine.offer(Msg(S, Priority.CRITICAL), clock.now, True).verdict == Verdict.FORWARD for _ in range(50)
    )


def test_half_open_successes_close_the_breaker() -> None:
    clock = Clock()
    engine = _engine(clock)
    _open_by_failures(engine, clock)
    tick_load(engine, clock.advance(5), 0)
    engine.breaker_success(S, clock.now)
    assert engine.breaker_state(S) is HALF_OPEN
    engine.breaker_success(S, clock.now)
    assert engine.breaker_state(S) is CLOSED
    assert engine.breakers() == []
    changes = [(c.from_state, c.to_state) for c in engine.pop_breaker_changes()]
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    assert engine.pop_breaker_changes() == []


def test_half_open_failure_reopens_with_doubled_backoff_up_to_the_cap() -> None:
    clock = Clock()
    engine = _engine(clock, recovery_delay_ms=5000, max_backoff_ms=30_000)
    _open_by_failures(engine, clock)
    backoffs = []
    for _ in range(6):
        snapshot = engine.breakers()[0]
        backoffs.append(snapshot.backoff_ms)
        assert snapshot.next_attempt_at == pytest.approx(clock.now + snapshot.backoff_ms / 1000)
        tick_load(engine, clock.advance(snapshot.backoff_ms / 1000 - 0.001), 0)
        assert engine.breaker_state(S) is OPEN
        tick_load(engine, clock.advance(0.001), 0)
        assert engine.breaker_state(S) is HALF_OPEN
        engine.breaker_failure(S, clock.now)
        assert engine.breaker_state(S) is OPEN
    assert backoffs == [5000, 10_000, 20_000, 30_000, 30_000, 30_000]


def test_backoff_cap_is_at_least_the_recovery_delay() -> None:
    clock = Clock()
    engine = _engine(clock, recovery_delay_ms=8000, max_backoff_ms=1000)
    _open_by_failures(engine, clock)
    tick_load(engine, clock.advance(8), 0)
    engine.breaker_failure(S, clock.now)
    assert engine.breakers()[0].backoff_ms == 8000


def test_failures_while_open_change_nothing() -> None:
    clock = Clock()
    engine = _engine(clock)
    _open_by_failures(engine, clock)
    before = engine.breakers()
    engine.breaker_failure(S, clock.advance(1))
    engine.breaker_success(S, clock.now)
    assert engine.breakers() == before


def test_manual_open_stays_open_until_closed_by_hand() -> None:
    clock = Clock()
    engine = _engine(clock)
    assert engine.open_breaker(S, clock.now)
    snapshot = engine.breakers()[0]
    assert (snapshot.state, snapshot.reason, snapshot.next_attempt_at) == ("open", "manual", None)
    for _ in range(10):
        tick_load(engine, clock.advance(3600), 0)
        assert engine.offer(Msg(S), clock.now, True).reason == "circuit_breaker"
    assert engine.breaker_state(S) is OPEN
    assert engine.close_breaker(S, clock.now)
    assert engine.breaker_state(S) is CLOSED
    assert engine.offer(Msg(S), clock.now, True).verdict == Verdict.FORWARD
    assert not engine.close_breaker(S, clock.now)


def test_manual_open_overrides_an_automatic_breaker() -> None:
    clock = Clock()
    engine = _engine(clock)
    _open_by_failures(engine, clock)
    engine.open_breaker(S, clock.now)
    tick_load(engine, clock.advance(60), 0)
    assert engine.breaker_state(S) is OPEN


def test_close_keeps_the_failure_count_and_reset_forgets_it() -> None:
    clock = Clock()
    engine = _engine(clock)
    _open_by_failures(engine, clock)
    engine.close_breaker(S, clock.now)
    snapshot = engine.breakers()[0]
    assert (snapshot.state, snapshot.failures) == ("closed", 3)
    engine.breaker_failure(S, clock.now)  # still failing: reopens at once
    assert engine.breaker_state(S) is OPEN
    assert engine.reset_breaker(S, clock.now)
    assert engine.breakers() == []
    engine.breaker_failure(S, clock.now)
    engine.breaker_failure(S, clock.now)
    assert engine.breaker_state(S) is CLOSED
    assert not engine.reset_breaker("kpi.unknown", clock.now)


def test_reset_after_backoff_growth_restarts_from_the_base_delay() -> None:
    clock = Clock()
    engine = _engine(clock)
    _open_by_failures(engine, clock)
    tick_load(engine, clock.advance(5), 0)
    engine.breaker_failure(S, clock.now)
    assert engine.breakers()[0].backoff_ms == 10_000
    engine.reset_breaker(S, clock.now)
    _open_by_failures(engine, clock)
    assert engine.breakers()[0].backoff_ms == 5000


def test_switch_off_ignores_failures_but_manual_opens_still_work() -> None:
    clock = Clock()
    engine = _engine(clock, enable_circuit_breaker=False)
    for _ in range(10):
        engine.breaker_failure(S, clock.now)
    assert engine.breakers() == []
    assert engine.open_breaker(S, clock.now)
    assert engine.offer(Msg(S), clock.now, True).reason == "circuit_breaker"


def test_switching_off_forgets_automatic_breakers_and_releases_parked() -> None:
    clock = Clock()
    engine = _engine(clock)
    _open_by_failures(engine, clock)
    engine.open_breaker("kpi.manual", clock.now)
    engine.offer(Msg(S, Priority.CRITICAL), clock.now, True)
    engine.update_config(msgspec.structs.replace(engine.config, enable_circuit_breaker=False), now=clock.now)
    assert [b.subject for b in engine.breakers()] == ["kpi.manual"]
    assert len(engine.take(clock.now)) == 1
    assert reconciles(engine)


def test_parked_critical_messages_count_against_the_queue_and_block_when_full() -> None:
    clock = Clock()
    engine = _engine(clock, max_queue_size=3)
    _open_by_failures(engine, clock)
    engine.offer(Msg("kpi.other", Priority.LOW), clock.now, False)
    engine.offer(Msg(S, Priority.CRITICAL), clock.now, True)
    engine.offer(Msg(S, Priority.CRITICAL), clock.now, True)
    decision = engine.offer(Msg(S, Priority.CRITICAL), clock.now, True)
    assert decision.verdict == Verdict.QUEUE
    assert [m.subject for m in decision.evicted] == ["kpi.other"]
    assert engine.offer(Msg(S, Priority.CRITICAL), clock.now, True) == Decision(Verdict.BLOCK)
    assert engine.queue_size == 3
    assert reconciles(engine)
    assert len(engine.drain(clock.now)) == 3
    assert reconciles(engine)


def test_critical_level_opens_heavy_hitters_only() -> None:
    clock = Clock()
    engine = _engine(
        clock,
        breaker_critical_top_subjects=2,
        enable_sampling=False,
        max_queue_size=100_000,
        max_publish_rate=1000,
    )
    # Over 1 s: 2500 + 2000 + 500 + 2 + 500 replies; heavy = at least 20 % of the 5002 offered.
    traffic = {"kpi.a": 2500, "kpi.b": 2000, "kpi.c": 500, "kpi.quiet": 2}
    for subject, count in traffic.items():
        for _ in range(count):
            engine.offer(Msg(subject), clock.advance(0.0001), True)
    for i in range(500):  # replies and critical traffic never count
        engine.offer(Msg(f"_INBOX.r.{i}"), clock.now, True)
        engine.offer(Msg("kpi.crit", Priority.CRITICAL), clock.now, True)
    assert engine.level is Level.CRITICAL  # 5000 offers/s: the publish-rate signal, between ticks
    assert engine.breakers() == []  # breakers open at the tick
    tick_load(engine, clock.advance(0.1), 250)
    assert {(b.subject, b.reason) for b in engine.breakers()} == {
        ("kpi.a", "critical_level"),
        ("kpi.b", "critical_level"),
    }
    tick_load(engine, clock.advance(0.1), 250)
    assert len(engine.breakers()) == 2  # never more than N


@pytest.mark.parametrize("share", [0.2, 0.5])
def test_a_quiet_subject_is_never_a_heavy_hitter(share: float) -> None:
    """A service at 2 req/s while the load is critical for another reason (memory): the offered load is
    counted as at least maxPublishRate, so its 100 % share of a tiny total does not make it heavy."""
    clock = Clock()
    engine = _engine(clock, breaker_critical_share=share, max_publish_rate=1000)
    for _ in range(30):
        engine.offer(Msg("svc.quiet", is_request=True), clock.advance(0.5), True)
        tick_load(engine, clock.now, 250)
        assert engine.level is Level.CRITICAL
    assert engine.breakers() == []
    assert engine.breaker_state("svc.quiet") is CLOSED


def test_critical_level_breakers_close_as_soon_as_the_level_is_below_critical() -> None:
    clock = Clock()
    engine = _engine(
        clock,
        breaker_critical_top_subjects=1,
        enable_sampling=False,
        recovery_delay_ms=5000,
        max_publish_rate=10,
        queue_delay_target_ms=0,  # nothing takes from the queue: its standing delay would hold critical
    )
    for _ in range(10):
        engine.offer(Msg("kpi.a"), clock.now, True)
    tick_load(engine, clock.now, 250)
    assert engine.breaker_state("kpi.a") is OPEN
    tick_load(engine, clock.advance(1), 250)
    tick_load(engine, clock.advance(1), 100)  # below 180: the recovery timer starts
    assert engine.breaker_state("kpi.a") is OPEN
    tick_load(engine, clock.advance(5), 100)  # the level goes to medium: the breaker closes with it
    assert engine.level is Level.MEDIUM
    assert engine.breaker_state("kpi.a") is CLOSED
    assert engine.breakers() == []


def test_critical_level_opens_nothing_when_the_switch_is_off_or_n_is_zero() -> None:
    for overrides in ({"enable_circuit_breaker": False}, {"breaker_critical_top_subjects": 0}):
        clock = Clock()
        engine = _engine(clock, **overrides)
        for _ in range(10):
            engine.offer(Msg("kpi.a"), clock.now, True)
        tick_load(engine, clock.now, 250)
        assert engine.breakers() == []


def test_breaker_table_is_bounded() -> None:
    clock = Clock()
    engine = _engine(clock, breaker_failure_threshold=2)
    for i in range(5000):
        engine.breaker_failure(f"kpi.s{i}", clock.now)
    assert len(engine.breakers()) == 1000
    # Closed records make room for new ones; open ones are never pushed out.
    for i in range(1000):
        engine.open_breaker(f"kpi.open{i}", clock.now)
    assert len(engine.breakers()) == 1000
    assert all(b.state == "open" for b in engine.breakers())
    assert not engine.open_breaker("kpi.one.too.many", clock.now)
    engine.breaker_failure("kpi.new", clock.now)
    assert engine.breaker_state("kpi.new") is CLOSED
    assert len(engine.breakers()) == 1000


def test_critical_messages_pass_a_breaker_the_critical_level_opened_and_wait_behind_others() -> None:
    # Before, they were parked behind a heavy-hitter breaker too: the queue filled with them and their
    # publishers stalled (BLOCK) although the upstream took the subject.
    clock = Clock()
    engine = _engine(clock, breaker_critical_top_subjects=1, enable_sampling=False, max_publish_rate=1000)
    for _ in range(3000):
        engine.offer(Msg("kpi.heavy"), clock.advance(0.0001), True)
    tick_load(engine, clock.advance(0.1), 250)
    assert [(b.subject, b.reason) for b in engine.breakers()] == [("kpi.heavy", "critical_level")]
    _open_by_failures(engine, clock, "kpi.failing")
    engine.drain(clock.now)  # what the flood queued
    queued, forwarded = engine.queue_size, engine.forwarded
    engine.offer(Msg("kpi.heavy", Priority.CRITICAL), clock.now, True)
    assert engine.offer(Msg("kpi.heavy"), clock.now, True).reason == "circuit_breaker"
    engine.offer(Msg("kpi.failing", Priority.CRITICAL), clock.now, True)
    snap = engine.snapshot(clock.now)
    assert snap.parked == 1 and engine.queue_size == queued + 1  # the failing subject's
    assert engine.forwarded == forwarded + 1  # the heavy hitter's critical message went
    # The same in bulk: the heavy hitter's critical group is kept, the failing one's parked.
    groups = [
        ("kpi.heavy", 3, Priority.CRITICAL, Role.DATA),
        ("kpi.failing", 2, Priority.CRITICAL, Role.DATA),
    ]
    plan = engine.decide_run(groups, clock.now, True)
    assert plan == [(APART, 0), (PARKED, 0)]
    assert reconciles(engine)
