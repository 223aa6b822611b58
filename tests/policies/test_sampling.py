"""Adaptive sampling: rates by level, who is never sampled, the switch, and what `sampled` counts."""

from __future__ import annotations

from typing import Any

import pytest

from policies.config import Level, Priority
from policies.engine import Engine, Verdict
from tests.policies.fakes import Clock, Msg, make_engine, reconciles, tick_load

N = 20_000
LEVEL_LOADS = [
    (Level.NONE, 0, 1.0),
    (Level.LOW, 80, 0.9),
    (Level.MEDIUM, 120, 0.7),
    (Level.HIGH, 170, 0.5),
    (Level.CRITICAL, 250, 0.2),
]


def _engine_at(load: float, **overrides: Any) -> tuple[Engine, Clock]:
    clock = Clock()
    # A huge queue and no breakers: only sampling decides here.
    engine = make_engine(clock, max_queue_size=1_000_000, enable_circuit_breaker=False, **overrides)
    tick_load(engine, clock.now, load)
    return engine, clock


@pytest.mark.parametrize(("level", "load", "rate"), LEVEL_LOADS)
@pytest.mark.parametrize("priority", [Priority.LOW, Priority.MEDIUM])
def test_sampling_keeps_the_level_rate(level: Level, load: float, rate: float, priority: Priority) -> None:
    engine, clock = _engine_at(load, enable_prioritization=False)
    assert engine.level is level
    kept = sum(
        engine.offer(Msg(priority=priority), clock.now, True).verdict != Verdict.DROP for _ in range(N)
    )
    # Binomial: 4.5 standard deviations either side.
    sigma = (N * rate * (1 - rate)) ** 0.5
    assert abs(kept - N * rate) <= 4.5 * sigma + 1
    assert engine.sampled == N - kept
    assert engine.dropped_by_reason() == ({"sampling": N - kept} if kept < N else {})
    assert reconciles(engine)


@pytest.mark.parametrize(("level", "load", "rate"), LEVEL_LOADS)
@pytest.mark.parametrize(
    "msg",
    [
        Msg(priority=Priority.HIGH),
        Msg(priority=Priority.CRITICAL),
        Msg(priority=Priority.MEDIUM, is_request=True),
        Msg(priority=Priority.LOW, is_request=True),
    ],
)
def test_never_sampled(level: Level, load: float, rate: float, msg: Msg) -> None:
    engine, clock = _engine_at(load)
    for _ in range(2000):
        decision = engine.offer(msg, clock.now, True)
        assert decision.reason != "sampling"
    assert engine.sampled == 0


@pytest.mark.parametrize(("level", "load", "rate"), LEVEL_LOADS)
def test_sampling_switch_off_keeps_everything(level: Level, load: float, rate: float) -> None:
    engine, clock = _engine_at(load, enable_sampling=False, enable_prioritization=False)
    assert engine.sampling_rate == 1.0
    for _ in range(2000):
        engine.offer(Msg(priority=Priority.LOW), clock.now, True)
    assert engine.sampled == 0
    assert engine.dropped == 0


def test_sampling_is_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[Verdict]:
        clock = Clock()
        engine = make_engine(clock, seed=seed, max_queue_size=10_000)
        tick_load(engine, clock.now, 120)
        return [engine.offer(Msg(), clock.now, True).verdict for _ in range(500)]

    assert run(1234) == run(1234)
    assert run(1234) != run(4321)
