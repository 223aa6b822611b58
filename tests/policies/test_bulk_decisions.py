"""Engine.decide_run: a run of messages decided per group (shed, sampled, kept, set apart) at once, with
the same counters offer() keeps; and the fixed-point selection it hands the shell (policies.sampling)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.config import Level, Priority
from policies.roles import Role
from policies.sampling import APART, PARKED, REFUSED, SHARE_ONE, keeps, kept_of, share_of
from tests.policies.fakes import Clock, Msg, make_engine, reconciles, tick_load

LOW, MEDIUM, HIGH, CRITICAL = Priority.LOW, Priority.MEDIUM, Priority.HIGH, Priority.CRITICAL
DATA, REQUEST, REPLY = Role.DATA, Role.REQUEST, Role.REPLY
MIX = [
    ("s", 400, LOW, DATA),
    ("s", 400, MEDIUM, DATA),
    ("s", 150, HIGH, DATA),
    ("s", 50, CRITICAL, DATA),
    ("s", 30, MEDIUM, REQUEST),
    ("_INBOX.x", 20, MEDIUM, REPLY),
]


@given(n=st.integers(0, 5000), rate=st.sampled_from([0.2, 0.5, 0.7, 0.9, 1.0, 0.0]), u=st.floats(0, 0.999999))
def test_the_selection_keeps_what_kept_of_says_spread_over_the_group(n: int, rate: float, u: float) -> None:
    share, phase = share_of(rate), int(u * SHARE_ONE)
    kept = [j for j in range(n) if keeps(j, share, phase)]
    assert len(kept) == kept_of(n, share, phase)
    assert abs(len(kept) - n * rate) <= 1
    # Evenly: no two kept messages closer than the share allows (at a rate of 0.5, every other one).
    if rate and len(kept) > 1:
        assert min(b - a for a, b in itertools.pairwise(kept)) >= int(1 / rate)


@pytest.mark.parametrize("level", [Level.HIGH, Level.CRITICAL])
def test_a_run_at_high_and_critical_is_decided_per_group(level: Level) -> None:
    clock = Clock()
    engine = make_engine(clock, max_queue_size=10_000)
    tick_load(engine, clock.now, 170 if level is Level.HIGH else 250)
    assert engine.level is level
    plan = engine.decide_run(MIX, clock.now, True)
    assert plan is not None
    rate = 0.5 if level is Level.HIGH else 0.2
    low, medium, high, critical, request, reply = plan
    assert low == (0, 0)  # shed: low_priority
    assert medium[0] == share_of(rate)  # sampled, the phase drawn from the rng
    assert high == request == reply == (SHARE_ONE, 0)  # requests and replies are never sampled
    assert critical == (APART, 0)  # kept, written one by one by the shell (Nats-Msg-Id, confirmation)
    kept_medium = kept_of(400, *medium)
    assert abs(kept_medium - 400 * rate) <= 1
    assert engine.forwarded == kept_medium + 150 + 50 + 30 + 20
    assert engine.dropped_by_reason() == {"low_priority": 400, "sampling": 400 - kept_medium}
    assert engine.sampled == 400 - kept_medium
    assert engine.received == 1050
    assert reconciles(engine)
    assert engine.received_by_priority()["low"] == 400


def test_the_same_seed_gives_the_same_plan() -> None:
    plans = []
    for _ in range(2):
        clock = Clock()
        engine = make_engine(clock, max_queue_size=10_000)
        tick_load(engine, clock.now, 170)
        plans.append([engine.decide_run(MIX, clock.now + i, True) for i in range(5)])
    assert plans[0] == plans[1]
    assert len({p[1] for p in plans[0]}) > 1  # a new phase for each run


def test_over_many_runs_the_kept_share_is_the_sampling_rate() -> None:
    clock = Clock()
    engine = make_engine(clock, max_queue_size=10_000, max_publish_rate=10_000_000)
    tick_load(engine, clock.now, 170)
    groups = [("s", 17, MEDIUM, DATA)]
    runs = 2000
    for _ in range(runs):
        clock.advance(0.001)
        assert engine.decide_run(groups * 3, clock.now, True) is not None
    assert engine.forwarded / (runs * 51) == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize(
    "why",
    [
        "upstream busy",
        "queued messages",
        "too few tokens",
        "less than a batch",
        "a breaker parks more critical messages than there is room for",
    ],
)
def test_the_per_message_path_when_a_run_cannot_be_decided_at_once(why: str) -> None:
    clock = Clock()
    engine = make_engine(clock, max_queue_size=10_000, max_publish_rate=100_000)
    tick_load(engine, clock.now, 170)
    groups = [("s", 100, HIGH, DATA)]
    can_send = why != "upstream busy"
    if why == "queued messages":
        engine.offer(Msg(priority=HIGH), clock.now, True)  # batching at high: it waits in the queue
        assert engine.queue_size == 1
    if why == "too few tokens":
        groups = [("s", 100_000, HIGH, DATA)]  # the burst is 0.1 s of 100 k/s
    if why == "less than a batch":
        groups = [("s", 19, HIGH, DATA)]  # batches of 20 at high
    if why.startswith("a breaker parks"):
        engine.open_breaker("s", clock.now)  # its critical messages wait beside the queue (10,000 at most)
        groups = [("s", 100, HIGH, DATA), ("s", 10_001, CRITICAL, DATA)]
    before = (engine.received, engine.forwarded, engine.dropped)
    assert engine.decide_run(groups, clock.now, can_send) is None
    assert (engine.received, engine.forwarded, engine.dropped) == before


def test_an_open_breaker_sheds_its_data_group_and_the_others_are_decided() -> None:
    # Before, any breaker record sent every run to the per-message path (a heavy-hitter breaker at
    # critical took the bench's intake from 1.5 M to 0.2 M msg/s): the same outcome, per group.
    clock = Clock()
    bulk = make_engine(clock, max_queue_size=10_000, max_publish_rate=1_000_000)
    single = make_engine(clock, max_queue_size=10_000, max_publish_rate=1_000_000)
    for engine in (bulk, single):
        engine.open_breaker("broken", clock.now)
        engine.open_breaker("other.idle", clock.now)
    plan = bulk.decide_run([("broken", 40, MEDIUM, DATA), ("fine", 60, MEDIUM, DATA)], clock.now, True)
    assert plan == [(0, 0), (SHARE_ONE, 0)]
    for subject, n in (("broken", 40), ("fine", 60)):
        for _ in range(n):
            single.offer(Msg(subject), clock.now, True)
    for engine in (bulk, single):
        assert (engine.received, engine.forwarded, engine.dropped) == (100, 60, 40)
        assert engine.dropped_by_reason()["circuit_breaker"] == 40
    assert bulk.dropped_by_subject() == single.dropped_by_subject()
    # A request to an open breaker gets its 503 from the per-message path.
    assert bulk.decide_run([("broken", 1, MEDIUM, REQUEST)], clock.now, True) is None


@pytest.mark.parametrize("level", [Level.HIGH, Level.CRITICAL])
def test_shed_requests_are_refused_in_bulk_with_the_counts_of_offer(level: Level) -> None:
    # Before, one low request in a run sent the whole run to the per-message path (requests at critical:
    # 0.1x the leaf node's intake): now the group is REFUSED, the shell sends each its 503.
    clock = Clock()
    bulk = make_engine(clock, max_queue_size=10_000, max_publish_rate=1_000_000)
    single = make_engine(clock, max_queue_size=10_000, max_publish_rate=1_000_000)
    for engine in (bulk, single):
        tick_load(engine, clock.now, 170 if level is Level.HIGH else 250)
        assert engine.level is level
    groups = [("s", 100, HIGH, DATA), ("s", 40, LOW, REQUEST), ("s", 30, HIGH, REQUEST)]
    plan = bulk.decide_run(groups, clock.now, True)
    assert plan == [(SHARE_ONE, 0), (REFUSED, 0), (SHARE_ONE, 0)]
    for subject, n, priority, role in groups:
        for _ in range(n):
            decision = single.offer(Msg(subject, priority, role=role), clock.now, True)
            assert decision.reason == ("low_priority" if priority is LOW else None)
    for engine in (bulk, single):
        assert (engine.received, engine.forwarded + engine.queue_size, engine.dropped) == (170, 130, 40)
        assert engine.dropped_by_reason() == {"low_priority": 40}
        assert reconciles(engine)
    assert bulk.dropped_by_subject() == single.dropped_by_subject()


def test_at_none_everything_is_kept_and_critical_set_apart() -> None:
    clock = Clock()
    engine = make_engine(clock)
    plan = engine.decide_run(MIX, clock.now, True)
    assert plan == [(SHARE_ONE, 0)] * 3 + [(APART, 0)] + [(SHARE_ONE, 0)] * 2
    assert engine.forwarded == 1050 and engine.dropped == 0


def _half_open(clock: Clock, **overrides: object) -> object:
    engine = make_engine(
        clock,
        max_queue_size=10_000,
        max_publish_rate=10_000_000,
        breaker_failure_threshold=1,
        breaker_half_open_fraction=0.25,
        recovery_delay_ms=1000,
        **overrides,
    )
    engine.breaker_failure("trial", clock.now)  # open, half-open in 1 s
    return engine


@pytest.mark.parametrize("level", [Level.NONE, Level.HIGH, Level.CRITICAL])
def test_a_half_open_breaker_keeps_its_trial_share_in_bulk(level: Level) -> None:
    # Before, a half-open breaker sent every run of its subject to the per-message path ((g) at critical
    # fell to 0.2 M msg/s while the heavy-hitter breaker was half-open): the same shares, per group.
    load = {Level.NONE: 0, Level.HIGH: 170, Level.CRITICAL: 250}[level]
    counts = {}
    for path in ("bulk", "single"):
        clock = Clock()
        engine = _half_open(clock)
        tick_load(engine, clock.now, load)
        assert engine.level is level
        clock.advance(1.5)  # the delay is over: the next message turns the breaker half-open
        for _ in range(400):
            clock.advance(0.0005)
            groups = [("trial", 50, MEDIUM, DATA), ("trial", 5, CRITICAL, DATA), ("fine", 45, HIGH, DATA)]
            if path == "bulk":
                plan = engine.decide_run(groups, clock.now, True)
                assert plan is not None
                assert plan[1] == (APART, 0)  # critical messages pass a half-open breaker
            else:
                for subject, n, priority, _ in groups:
                    for _ in range(n):
                        engine.offer(Msg(subject, priority=priority), clock.now, True)
                engine.take(clock.now, batch_due=True)  # what batching at high queued
        assert engine.breaker_state("trial").label == "half_open"
        assert reconciles(engine) and engine.queue_size == 0
        counts[path] = (engine.forwarded, engine.dropped_by_reason(), engine.dropped_by_subject())
    rate = {Level.NONE: 1.0, Level.HIGH: 0.5, Level.CRITICAL: 0.2}[level]
    for forwarded, reasons, by_subject in counts.values():
        trials = forwarded - 400 * (5 + 45)  # critical and the other subject are all kept
        assert trials == pytest.approx(400 * 50 * 0.25 * rate, rel=0.1)
        assert reasons["circuit_breaker"] == pytest.approx(400 * 50 * 0.75, rel=0.05)
        assert reasons.get("sampling", 0) == pytest.approx(400 * 50 * 0.25 * (1 - rate), rel=0.1, abs=2)
        assert {subject for _, subject in by_subject} == {"trial"}


def test_low_messages_of_a_half_open_breaker_at_high_are_counted_as_offer_counts_them() -> None:
    clock = Clock()
    engine = _half_open(clock)
    tick_load(engine, clock.now, 170)
    clock.advance(1.5)
    plan = engine.decide_run([("trial", 1000, LOW, DATA)], clock.now, True)
    assert plan is not None and plan[0][0] == 0
    reasons = engine.dropped_by_reason()
    # The gate drops three in four (circuit_breaker); low priority sheds the trials it passed.
    assert reasons["circuit_breaker"] == pytest.approx(750, abs=1)
    assert reasons["low_priority"] == pytest.approx(250, abs=1)
    assert engine.forwarded == 0 and reconciles(engine)


def test_a_request_to_a_half_open_breaker_is_decided_one_by_one() -> None:
    clock = Clock()
    engine = _half_open(clock)
    clock.advance(1.5)
    assert engine.decide_run([("trial", 3, MEDIUM, REQUEST)], clock.now, True) is None


def test_critical_messages_for_an_open_breaker_are_parked_and_the_rest_decided_in_bulk() -> None:
    # Before, they sent the whole run to the per-message path ((g) at critical: 0.2 M msg/s while the
    # heavy-hitter breaker was open). Now their group is PARKED: nothing counted, the shell offers each.
    clock = Clock()
    engine = make_engine(clock, max_queue_size=10_000, max_publish_rate=1_000_000)
    engine.open_breaker("s", clock.now)
    groups = [("s", 100, HIGH, DATA), ("s", 5, CRITICAL, DATA), ("other", 50, HIGH, DATA)]
    plan = engine.decide_run(groups, clock.now, True)
    assert plan == [(0, 0), (PARKED, 0), (SHARE_ONE, 0)]
    assert (engine.received, engine.forwarded, engine.dropped) == (150, 50, 100)
    for _ in range(5):
        assert engine.offer(Msg("s", priority=CRITICAL), clock.now, True).verdict.name == "QUEUE"
    assert engine.critical_queued() == 5 and engine.received == 155 and reconciles(engine)
    engine.close_breaker("s", clock.now)
    engine.tick(clock.now, memory_mb=0, cpu_percent=0)
    assert len(engine.take(clock.now)) == 5  # released once the breaker is no longer open
