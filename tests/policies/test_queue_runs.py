"""Engine.queue_run: a run of data queued in bulk as one QueuedRun per lane gives the counts, the queue
sizes and the messages out, in order, that offer() one by one gives; at the queue limit (eviction of the
head of a run, full queue), sampled and shed, through a partial take by the rate ceiling, take-back,
remove and clear."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.config import Level, Priority
from policies.engine import Engine
from policies.queue import LANES, PriorityQueue, QueuedRun, RunSlice, lane_of
from policies.roles import Role
from tests.policies.fakes import Clock, Msg, make_engine, reconciles, tick_load

LOW, MEDIUM, HIGH, CRITICAL = Priority.LOW, Priority.MEDIUM, Priority.HIGH, Priority.CRITICAL
DATA = Role.DATA


def run_of(spec: list[tuple[str, Priority, int]]) -> list[Msg]:
    """Messages in run order: (subject, priority, how many); sizes tell each message apart."""
    msgs: list[Msg] = []
    for subject, priority, k in spec:
        msgs.extend(Msg(subject, priority, size=1000 + len(msgs)) for _ in range(k))
    return msgs


def interleave(*parts: list[Msg]) -> list[Msg]:
    out: list[Msg] = []
    for i in range(max(len(p) for p in parts)):
        out.extend(p[i] for p in parts if i < len(p))
    return out


def groups_of(msgs: list[Msg]) -> list[tuple[str, int, Priority, Role]]:
    """The run's groups as the shell makes them: per (subject, priority), in first-seen order."""
    counts: dict[tuple[str, Priority], int] = {}
    for m in msgs:
        counts[(m.subject, m.priority)] = counts.get((m.subject, m.priority), 0) + 1
    return [(s, k, p, DATA) for (s, p), k in counts.items()]


def queue_run(
    engine: Engine, msgs: list[Msg], now: float, can_send: bool = False, slices: bool = False
) -> bool:
    """engine.queue_run of `msgs`; with `slices`, its QueuedRuns let messages leave together (RunSlice,
    their item the list of those messages)."""
    groups = groups_of(msgs)
    index = {(s, p): g for g, (s, _, p, _) in enumerate(groups)}

    order = [index[(m.subject, m.priority)] for m in msgs]

    def build(lanes: list[int], keep: bytearray | None) -> list[tuple[int, QueuedRun]]:
        out = []
        for lane in sorted({lane for lane in lanes if lane}):
            mine = [m for i, m in enumerate(msgs) if lanes[order[i]] == lane and (keep is None or keep[i])]
            if mine:
                cut = (lambda i, j, mine=mine: (mine[i:j], groups_of(mine[i:j]))) if slices else None
                out.append((lane, QueuedRun(mine.__getitem__, [m.size for m in mine], cut)))
        return out

    return engine.queue_run(groups, now, can_send, build, order)


def expand(items: list[Any]) -> list[Any]:
    """The messages of take()'s items, RunSlices opened."""
    return [m for item in items for m in (item.item if type(item) is RunSlice else [item])]


def offer_all(engine: Engine, msgs: list[Msg], now: float, can_send: bool = False) -> list[Any]:
    return [engine.offer(m, now, can_send) for m in msgs]


def state(engine: Engine) -> dict[str, Any]:
    queue = engine._queue
    return {
        "received": engine.received,
        "forwarded": engine.forwarded,
        "dropped": engine.dropped_by_reason(),
        "by_subject": engine.dropped_by_subject(),
        "received_by_priority": engine.received_by_priority(),
        "queue_size": engine.queue_size,
        "nbytes": queue.nbytes,
        "by_priority": [queue.size_of(p) for p in Priority],
        "lanes": [queue.lane_size(lane) for lane in range(1, LANES + 1)],
        "level": engine.level,
        "requests": queue.has_requests,
    }


def ids(items: list[Any]) -> list[int]:
    return [m.size for m in items]


def warm(*engines: Engine, now: float) -> None:
    """The level check a first offer makes (then not again for CHECK_INTERVAL_S), done by one message."""
    for engine in engines:
        engine.offer(Msg("warm", HIGH), now, False)
        engine.drain(now)


def pair(**overrides: Any) -> tuple[Clock, Engine, Engine]:
    clock = Clock()
    one, bulk = make_engine(clock, **overrides), make_engine(clock, **overrides)
    warm(one, bulk, now=clock.now)
    return clock, one, bulk


MIXED = interleave(
    run_of([("a", MEDIUM, 20)]),
    run_of([("b", HIGH, 15)]),
    run_of([("c", MEDIUM, 10)]),
    run_of([("d", LOW, 5)]),
)


def test_a_run_queued_in_bulk_counts_and_releases_as_offered_one_by_one() -> None:
    clock, one, bulk = pair(max_queue_size=1000)
    offer_all(one, MIXED, clock.now)
    assert queue_run(bulk, MIXED, clock.now)
    assert state(bulk) == state(one)
    assert reconciles(bulk)
    # One QueuedRun per lane: the medium data of subjects a and c together.
    assert len(bulk._queue._items[lane_of(MEDIUM, DATA)]) == 1
    assert ids(bulk.take(clock.now)) == ids(one.take(clock.now))
    assert state(bulk) == state(one)
    assert bulk.queue_size == 0 and bulk._queue.nbytes == 0


def test_a_run_behind_queued_messages_and_before_later_ones_keeps_fifo_order() -> None:
    clock, one, bulk = pair(max_queue_size=1000)
    first = run_of([("x", MEDIUM, 3)])
    later = run_of([("y", MEDIUM, 4), ("z", HIGH, 2)])
    for engine in (one, bulk):
        offer_all(engine, first, clock.now)
    offer_all(one, MIXED, clock.now)
    assert queue_run(bulk, MIXED, clock.now)
    for engine in (one, bulk):
        offer_all(engine, later, clock.advance(0.01))
    assert state(bulk) == state(one)
    assert bulk.oldest_queued_age_of(MEDIUM, clock.now) == one.oldest_queued_age_of(MEDIUM, clock.now)
    assert ids(list(bulk._queue)) == ids(list(one._queue))
    assert ids(bulk.drain(clock.now)) == ids(one.drain(clock.now))
    assert state(bulk) == state(one)


def test_the_rate_ceiling_takes_part_of_a_run_and_the_rest_stays_at_the_head() -> None:
    clock, one, bulk = pair(max_queue_size=1000, max_publish_rate=10, rate_burst_seconds=1)
    for engine in (one, bulk):
        engine.take(clock.now)  # the bucket starts full: spend nothing, just refill
    offer_all(one, MIXED, clock.now)
    assert queue_run(bulk, MIXED, clock.now)
    out_one: list[int] = []
    out_bulk: list[int] = []
    for _ in range(8):
        taken = bulk.take(clock.now, limit=7)
        assert len(taken) <= 10
        out_bulk += ids(taken)
        out_one += ids(one.take(clock.now, limit=7))
        assert state(bulk) == state(one)
        clock.advance(0.35)
    assert out_bulk == out_one
    assert 0 < len(out_bulk) < len(MIXED)  # partly taken: the rest is still queued
    assert ids(list(bulk._queue)) == ids(list(one._queue))


@pytest.mark.parametrize("hold_critical", [False, True])
def test_queued_runs_leave_in_slices_with_the_counts_of_one_by_one(hold_critical: bool) -> None:
    # The pump writes a RunSlice as one buffer and one journal entry instead of one OutMsg each: the
    # same messages in the same order, the same counters (forwarded per subject and priority, batches).
    clock, one, bulk = pair(max_queue_size=1000, max_publish_rate=10, rate_burst_seconds=1)
    for engine in (one, bulk):
        engine.take(clock.now)
        engine.hold_critical = hold_critical  # (take() then pops below the critical lane)
    offer_all(one, MIXED, clock.now)
    assert queue_run(bulk, MIXED, clock.now, slices=True)
    out_one: list[int] = []
    out_bulk: list[int] = []
    slices = 0
    for _ in range(8):
        taken = bulk.take(clock.now, limit=7)
        slices += sum(type(item) is RunSlice for item in taken)
        assert sum(item.n if type(item) is RunSlice else 1 for item in taken) <= 7
        out_bulk += ids(expand(taken))
        out_one += ids(one.take(clock.now, limit=7))
        assert state(bulk) == state(one)
        assert bulk.forwarded_by_subject_role() == one.forwarded_by_subject_role()
        clock.advance(0.35)
    assert out_bulk == out_one and 0 < len(out_bulk) < len(MIXED)
    assert slices > 0
    assert ids(list(bulk._queue)) == ids(list(one._queue))
    assert ids(bulk.drain(clock.now)) == ids(one.drain(clock.now))
    assert state(bulk) == state(one) and reconciles(bulk)


def test_at_the_ceiling_a_run_with_no_token_for_its_first_message_is_queued_in_bulk() -> None:
    # Before, queue_run refused at level none with nothing queued (offer() would forward the first
    # message at once), even with no rate token for it: the ceiling sent every run message by message.
    clock, one, bulk = pair(max_queue_size=1000, max_publish_rate=10, rate_burst_seconds=1)
    for engine in (one, bulk):
        engine.take_tokens(clock.now, 10)  # the bucket empty
    msgs = run_of([("a", MEDIUM, 5), ("b", HIGH, 5)])
    offer_all(one, msgs, clock.now, can_send=True)
    assert queue_run(bulk, msgs, clock.now, can_send=True)
    assert state(bulk) == state(one) and bulk.queue_size == 10
    # With a token and nothing queued, the first message goes at once: not queued in bulk.
    _, _, fresh = pair(max_queue_size=1000, max_publish_rate=10, rate_burst_seconds=1)
    assert fresh.tokens(clock.now) >= 1
    assert not queue_run(fresh, run_of([("a", MEDIUM, 3)]), clock.now, can_send=True)
    assert fresh.queue_size == 0 and fresh.received == 1  # (the warm-up message)


def test_take_back_goes_ahead_of_what_is_left_of_a_run() -> None:
    clock, one, bulk = pair(max_queue_size=1000)
    offer_all(one, MIXED, clock.now)
    assert queue_run(bulk, MIXED, clock.now)
    taken_one, taken_bulk = one.take(clock.now, limit=25), bulk.take(clock.now, limit=25)
    assert ids(taken_bulk) == ids(taken_one)
    assert one.take_back(taken_one, clock.now) == [] and bulk.take_back(taken_bulk, clock.now) == []
    assert state(bulk) == state(one)
    assert ids(bulk.drain(clock.now)) == ids(one.drain(clock.now))


def test_clear_and_drop_queued_remove_messages_of_a_run() -> None:
    clock, one, bulk = pair(max_queue_size=1000)
    offer_all(one, MIXED, clock.now)
    assert queue_run(bulk, MIXED, clock.now)
    # Part of a lane's run matches: the rest stays, in order.
    dropped_one = one.drop_queued(lambda m: m.subject == "c", "upstream_lost")
    dropped_bulk = bulk.drop_queued(lambda m: m.subject == "c", "upstream_lost")
    assert ids(dropped_bulk) == ids(dropped_one) and len(dropped_bulk) == 10
    assert state(bulk) == state(one)
    assert ids(list(bulk._queue)) == ids(list(one._queue))
    # Nothing matches: the runs stay whole.
    assert bulk.drop_queued(lambda m: m.subject == "nope", "upstream_lost") == []
    assert len(bulk._queue._items[lane_of(HIGH, DATA)]) == 1
    assert ids(bulk.clear()) == ids(one.clear())
    assert state(bulk) == state(one)
    assert bulk.queue_size == 0 and bulk._queue.nbytes == 0
    assert reconciles(bulk)


def test_a_newcomer_at_the_limit_evicts_the_head_of_a_run_counted_queue_full_for_its_subject() -> None:
    clock, one, bulk = pair()  # maxQueueSize 100; the level is re-evaluated from 70 queued
    low = run_of([("l", LOW, 40), ("m", MEDIUM, 29)])
    offer_all(one, low, clock.now)
    assert queue_run(bulk, low, clock.now)
    assert state(bulk) == state(one)
    # Fill to the limit, then high messages evict the oldest low ones (the head of the run), then the
    # medium ones, then a full queue of high messages drops what comes: all as offer() decides.
    newcomers = run_of([("h", HIGH, 31 + 75)])
    decisions_one = offer_all(one, newcomers, clock.advance(0.01))
    decisions_bulk = offer_all(bulk, newcomers, clock.now)
    assert [(d.verdict, d.reason, ids(list(d.evicted))) for d in decisions_bulk] == [
        (d.verdict, d.reason, ids(list(d.evicted))) for d in decisions_one
    ]
    assert bulk.dropped_by_subject()[("queue_full", "l")] == 40
    assert state(bulk) == state(one)
    assert ids(list(bulk._queue)) == ids(list(one._queue))
    assert reconciles(bulk)


def test_a_run_that_does_not_fit_is_left_to_offer() -> None:
    clock, one, bulk = pair()
    big = run_of([("m", MEDIUM, 70)])  # would reach the length that re-evaluates the level
    assert not queue_run(bulk, big, clock.now)
    assert state(bulk) == state(one)  # nothing counted
    assert queue_run(bulk, big[:69], clock.now)
    offer_all(one, big[:69], clock.now)
    assert not queue_run(bulk, big[69:], clock.now)
    offer_all(bulk, big[69:], clock.now)
    offer_all(one, big[69:], clock.now)
    assert state(bulk) == state(one)


def test_at_critical_low_data_is_shed_and_the_rest_queued_up_to_the_limit() -> None:
    clock, one, bulk = pair(max_queue_size=100)
    for engine in (one, bulk):
        tick_load(engine, clock.now, 250)
        assert engine.level is Level.CRITICAL
    warm(one, bulk, now=clock.advance(1.0))
    run = interleave(run_of([("h", HIGH, 60)]), run_of([("l", LOW, 30)]))
    offer_all(one, run, clock.now)
    assert queue_run(bulk, run, clock.now)
    assert state(bulk) == state(one)
    assert bulk.dropped_by_reason()["low_priority"] == 30
    over = run_of([("h", HIGH, 41)])  # one more than the room left: offer() would drop it queue_full
    assert not queue_run(bulk, over, clock.now)
    offer_all(bulk, over, clock.now)
    offer_all(one, over, clock.now)
    assert state(bulk) == state(one)
    assert bulk.dropped_by_reason()["queue_full"] == 1


@pytest.mark.parametrize(("load", "level"), [(100, Level.MEDIUM), (170, Level.HIGH), (250, Level.CRITICAL)])
def test_sampled_and_shed_runs_draw_and_count_as_offer_one_by_one(load: int, level: Level) -> None:
    clock, one, bulk = pair(max_queue_size=10_000)
    for engine in (one, bulk):
        tick_load(engine, clock.now, load)
        assert engine.level is level
    warm(one, bulk, now=clock.advance(1.0))
    for _ in range(5):
        run = interleave(run_of([("m", MEDIUM, 200)]), run_of([("h", HIGH, 50)]), run_of([("l", LOW, 80)]))
        offer_all(one, run, clock.now)
        assert queue_run(bulk, run, clock.now)
        assert state(bulk) == state(one)
        assert bulk.sampled == one.sampled > 0
    assert ids(list(bulk._queue)) == ids(list(one._queue))
    # The same draws: the rngs are in step.
    assert bulk._rng.random() == one._rng.random()
    assert ids(bulk.drain(clock.now)) == ids(one.drain(clock.now))
    assert reconciles(bulk)


@pytest.mark.parametrize(
    "why",
    ["sampling without the order", "critical", "request", "first goes now", "level check due", "breaker"],
)
def test_what_offer_decides_on_its_own_is_not_queued_in_bulk(why: str) -> None:
    clock = Clock()
    engine = make_engine(clock, max_queue_size=1000)
    run = run_of([("a", MEDIUM, 5)])
    can_send = False
    if why == "sampling without the order":
        tick_load(engine, clock.now, 100)  # medium: 0.7 of medium data kept
        clock.advance(1.0)
    elif why == "critical":
        run = run_of([("a", CRITICAL, 5)])
    elif why == "request":
        run = [Msg("a", MEDIUM, is_request=True)]
    elif why == "first goes now":
        can_send = True
    elif why == "breaker":
        engine.open_breaker("a", clock.now)  # offer() asks its gate
    if why != "level check due":
        warm(engine, now=clock.advance(1.0))
    groups = [(m.subject, 1, m.priority, m.role) for m in run]
    before = (engine.received, engine.queue_size)
    assert not engine.queue_run(groups, clock.now, can_send, lambda lanes, keep: pytest.fail("built"))
    assert (engine.received, engine.queue_size) == before


def test_critical_messages_are_handed_over_and_runs_stay_whole() -> None:
    clock, one, bulk = pair(max_queue_size=1000)
    critical = run_of([("k", CRITICAL, 3)])
    for engine in (one, bulk):
        offer_all(engine, critical[:2], clock.now)
    offer_all(one, MIXED, clock.now)
    assert queue_run(bulk, MIXED, clock.now)
    for engine in (one, bulk):
        offer_all(engine, critical[2:], clock.now)
    assert ids(bulk.hand_over_critical()) == ids(one.hand_over_critical())
    assert len(bulk._queue._items[lane_of(MEDIUM, DATA)]) == 1
    assert state(bulk) == state(one)
    assert ids(list(bulk._queue)) == ids(list(one._queue))


ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.sampled_from(list(Priority)), st.booleans()),
        st.tuples(st.just("run"), st.sampled_from([LOW, MEDIUM, HIGH]), st.integers(1, 6)),
        st.tuples(st.just("pop"), st.integers(1, 4)),
        st.tuples(st.just("evict"), st.integers(1, LANES + 1)),
        st.tuples(st.just("front"), st.integers(1, 3)),
        st.tuples(st.just("remove"), st.integers(2, 5)),
    ),
    max_size=40,
)


@given(ops=ops_st)
def test_a_queue_with_runs_behaves_as_one_with_their_messages_pushed_one_by_one(ops: list) -> None:
    runs, singles = PriorityQueue(), PriorityQueue()
    seq = [0]

    def new(priority: Priority, request: bool = False) -> Msg:
        seq[0] += 1
        return Msg("s", priority, is_request=request, size=seq[0])

    now = 0.0
    for op in ops:
        now += 1.0
        kind = op[0]
        if kind == "push":
            m = new(op[1], op[2])
            for q in (runs, singles):
                q.push(m, m.priority, now, m.role)
        elif kind == "run":
            msgs = [new(op[1]) for _ in range(op[2])]
            runs.push_run(QueuedRun(msgs.__getitem__, [m.size for m in msgs]), lane_of(op[1], DATA), now)
            for m in msgs:
                singles.push(m, m.priority, now)
        elif kind in ("pop", "front"):
            for _ in range(op[1]):
                if not singles.size:
                    break
                a, b = runs.pop(), singles.pop()
                assert a is b
                if kind == "front":
                    for q in (runs, singles):
                        q.push_front(a, a.priority, now, a.role)
        elif kind == "evict":
            a, b = runs.evict_below(op[1]), singles.evict_below(op[1])
            assert a is b
        else:
            k = op[1]
            removed = runs.remove_if(lambda m, k=k: m.size % k == 0)
            assert removed == singles.remove_if(lambda m, k=k: m.size % k == 0)
        assert (runs.size, runs.nbytes, runs.has_requests) == (
            singles.size,
            singles.nbytes,
            singles.has_requests,
        )
        assert [runs.lane_size(lane) for lane in range(1, LANES + 1)] == [
            singles.lane_size(lane) for lane in range(1, LANES + 1)
        ]
        assert [runs.size_of(p) for p in Priority] == [singles.size_of(p) for p in Priority]
        assert [runs.oldest_time_of(lane) for lane in range(1, LANES + 1)] == [
            singles.oldest_time_of(lane) for lane in range(1, LANES + 1)
        ]
        assert list(runs) == list(singles)
    assert runs.pop_all() == singles.pop_all()
    assert runs.size == runs.nbytes == 0
