"""update_config: each setting takes effect at once and together with the others."""

from __future__ import annotations

import msgspec
import pytest

from policies.config import Level, PolicyRule, Priority
from policies.engine import Verdict
from tests.policies.fakes import Clock, Msg, make_engine, reconciles, tick_load


def test_switches_apply_at_the_current_level() -> None:
    clock = Clock()
    engine = make_engine(clock)
    tick_load(engine, clock.now, 170)
    assert (engine.sampling_rate, engine.batch_size) == (0.5, 20)
    assert engine.offer(Msg(priority=Priority.LOW), clock.now, True).reason == "low_priority"
    config = msgspec.structs.replace(
        engine.config, enable_sampling=False, enable_batching=False, enable_prioritization=False
    )
    engine.update_config(config, now=clock.now)
    assert engine.level is Level.HIGH
    assert (engine.sampling_rate, engine.batch_size) == (1.0, 1)
    assert engine.offer(Msg(priority=Priority.LOW), clock.now, True).verdict == Verdict.FORWARD


def test_rate_ceiling_changes_keep_earned_tokens_up_to_the_new_burst() -> None:
    clock = Clock()
    engine = make_engine(clock, max_publish_rate=1000, rate_burst_seconds=0.1)  # burst 100
    engine.update_config(
        msgspec.structs.replace(engine.config, max_publish_rate=10), now=clock.now
    )  # burst 1
    forwarded = sum(engine.offer(Msg(), clock.now, True).verdict == Verdict.FORWARD for _ in range(10))
    assert forwarded == 1
    assert len(engine.take(clock.advance(0.1))) == 1


def test_batch_multiplier_and_delay_apply_to_queued_messages() -> None:
    clock = Clock()
    engine = make_engine(clock, enable_sampling=False, max_batch_delay_ms=1000)
    tick_load(engine, clock.now, 80)
    for _ in range(3):
        engine.offer(Msg(), clock.now, True)
    assert engine.take(clock.advance(0.1)) == []
    engine.update_config(msgspec.structs.replace(engine.config, max_batch_delay_ms=50), now=clock.now)
    assert len(engine.take(clock.now)) == 3
    engine.update_config(msgspec.structs.replace(engine.config, batch_size_multiplier=0.4), now=clock.now)
    assert engine.batch_size == 2


def test_recovery_settings_apply_to_the_running_timer() -> None:
    clock = Clock()
    engine = make_engine(clock, recovery_delay_ms=60_000)
    tick_load(engine, clock.now, 120)
    tick_load(engine, clock.advance(1), 0)
    engine.update_config(msgspec.structs.replace(engine.config, recovery_delay_ms=2000), now=clock.now)
    tick_load(engine, clock.advance(2), 0)
    assert engine.level is Level.NONE


def test_rules_and_config_change_together() -> None:
    clock = Clock()
    engine = make_engine(clock, max_queue_size=5, enable_sampling=False)
    engine.update_config(
        msgspec.structs.replace(engine.config, max_queue_size=1),
        [PolicyRule(subject="kpi.>", priority="high")],
        now=clock.now,
    )
    assert engine.classify("kpi.x", None)[0] is Priority.HIGH
    assert engine.rules[0].subject == "kpi.>"
    engine.offer(Msg(), clock.now, False)
    assert engine.offer(Msg(), clock.now, False).reason == "queue_full"
    assert reconciles(engine)


@pytest.mark.parametrize("window_ms", [100, 5000])
def test_rate_window_change_restarts_the_meter(window_ms: int) -> None:
    clock = Clock()
    engine = make_engine(clock, max_publish_rate=100)
    for _ in range(200):
        engine.offer(Msg(), clock.advance(0.005), True)
    engine.drain(clock.now)
    engine.tick(clock.now, memory_mb=0, cpu_percent=0)
    assert engine.load_percent == pytest.approx(200, rel=0.05)
    engine.update_config(
        msgspec.structs.replace(engine.config, publish_rate_window_ms=window_ms), now=clock.now
    )
    engine.tick(clock.now, memory_mb=0, cpu_percent=0)
    assert engine.load_percent == 0.0
