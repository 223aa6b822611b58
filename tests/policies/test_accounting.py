"""Counters, bounded subject labels, the million-subject memory bound, latency, snapshot."""

from __future__ import annotations

import gc
import sys

import msgspec
import pytest

from policies.accounting import OTHER_LABEL, Accounting
from policies.config import Priority
from policies.engine import EngineSnapshot, Verdict
from tests.policies.fakes import Clock, Msg, make_engine, reconciles, tick_load


def test_labels_are_bounded_and_the_rest_is_other() -> None:
    acc = Accounting(max_subjects=3)
    for subject in ("a", "b", "c", "d", "e", "a"):
        acc.forward(subject, Priority.HIGH)
    acc.drop("e", "sampling")
    acc.drop("b", "sampling")
    assert acc.label_count == 3
    assert acc.forwarded_by_subject() == {
        ("a", "high"): 2,
        ("b", "high"): 1,
        ("c", "high"): 1,
        (OTHER_LABEL, "high"): 2,
    }
    assert acc.dropped_by_subject() == {("sampling", "b"): 1, ("sampling", OTHER_LABEL): 1}
    assert acc.label_of("zzz") == OTHER_LABEL
    assert acc.label_of("a") == "a"


def test_breakdowns_sum_to_the_totals() -> None:
    clock = Clock()
    engine = make_engine(clock, max_subjects=5, max_queue_size=20)
    tick_load(engine, clock.now, 170)
    for i in range(3000):
        engine.offer(
            Msg(f"kpi.s{i % 13}", Priority(1 + i % 4), is_request=i % 5 == 0),
            clock.advance(0.001),
            i % 3 != 0,
        )
        if i % 7 == 0:
            engine.take(clock.now)
    assert sum(engine.forwarded_by_subject().values()) == engine.forwarded
    assert sum(engine.dropped_by_subject().values()) == engine.dropped
    assert sum(engine.dropped_by_reason().values()) == engine.dropped
    assert engine.sampled == engine.dropped_by_reason()["sampling"]
    assert {label for label, _ in engine.forwarded_by_subject()} <= {f"kpi.s{i}" for i in range(13)} | {
        OTHER_LABEL
    }
    assert len({label for label, _ in engine.forwarded_by_subject()}) <= 6
    assert reconciles(engine)


def _offer_distinct(engine, clock: Clock, start: int, count: int) -> None:
    classify = engine.classify
    offer = engine.offer
    for i in range(start, start + count):
        subject = f"kpi.tenant{i}.event"
        priority, _ = classify(subject, None)
        offer(Msg(subject, priority), clock.now, True)
        if i % 100 == 0:
            engine.breaker_failure(subject, clock.now)
        if i % 1000 == 0:
            engine.tick(clock.advance(1.0))


def test_a_million_distinct_subjects_do_not_grow_memory() -> None:
    clock = Clock()
    engine = make_engine(clock, max_subjects=500, max_publish_rate=1e12, enable_sampling=False)
    # Both measurements at multiples of 10_000 subjects, where every bounded structure (labels, rule
    # cache generations, traffic windows, breaker table) is full and at the same point of its cycle.
    _offer_distinct(engine, clock, 0, 200_000)
    gc.collect()
    blocks_before = sys.getallocatedblocks()
    _offer_distinct(engine, clock, 200_000, 800_000)
    gc.collect()
    blocks_after = sys.getallocatedblocks()
    assert engine.received == 1_000_000
    assert engine.forwarded == 1_000_000
    assert len(engine.forwarded_by_subject()) == 501
    assert len(engine.breakers()) == 1000
    # 800_000 more subjects kept would be millions of blocks; a bounded engine stays flat.
    assert blocks_after - blocks_before < 500
    assert reconciles(engine)


def test_latency_histogram_per_label() -> None:
    clock = Clock()
    engine = make_engine(clock, max_subjects=1)
    engine.observe_latency("a", 0.0004)
    engine.observe_latency("a", 0.003)
    engine.observe_latency("b", 100.0)
    histograms = engine.latency_by_subject()
    assert set(histograms) == {"a", OTHER_LABEL}
    assert histograms["a"].count == 2
    assert histograms["a"].buckets[0] == 1 and histograms["a"].buckets[3] == 1
    assert histograms[OTHER_LABEL].buckets[-1] == 1
    assert histograms["a"].total == pytest.approx(0.0034)


def test_snapshot_reports_the_state_and_encodes_to_json() -> None:
    clock = Clock()
    engine = make_engine(clock, max_queue_size=10)
    tick_load(engine, clock.now, 120)
    engine.offer(Msg(priority=Priority.HIGH, size=10), clock.now, True)
    engine.offer(Msg(priority=Priority.CRITICAL, size=20), clock.now, True)
    assert engine.offer(Msg(priority=Priority.HIGH), clock.now, True).verdict == Verdict.QUEUE
    snapshot = engine.snapshot(clock.advance(0.005))
    assert isinstance(snapshot, EngineSnapshot)
    assert (snapshot.level, snapshot.level_value, snapshot.dominant_signal) == ("medium", 2, "memory")
    assert snapshot.load_percent == 120.0
    assert snapshot.memory_ratio == 1.2
    assert (snapshot.sampling_rate, snapshot.batch_size) == (0.7, 10)
    assert snapshot.queue_size == 3
    assert snapshot.queue_by_priority == {"low": 0, "medium": 0, "high": 2, "critical": 1}
    assert snapshot.queued_bytes == 130
    assert abs(snapshot.oldest_queued_age - 0.005) < 1e-9
    assert (snapshot.received, snapshot.forwarded, snapshot.dropped, snapshot.spooled) == (3, 0, 0, 0)
    decoded = msgspec.json.decode(msgspec.json.encode(snapshot))
    assert decoded["queueSize"] == 3 and decoded["level"] == "medium"
