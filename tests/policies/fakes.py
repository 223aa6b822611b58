"""Test doubles for the policies tests: a message item, a fake clock, and an engine factory."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from policies.config import BackpressureConfig, PolicyRule, Priority
from policies.engine import Engine
from policies.roles import Role

SEED = 1234


class Msg:
    """An engine item, as the shell's message class provides it."""

    __slots__ = ("priority", "role", "size", "subject")

    def __init__(
        self,
        subject: str = "kpi.test",
        priority: Priority = Priority.MEDIUM,
        is_request: bool = False,
        size: int = 100,
        role: Role | None = None,
    ) -> None:
        self.subject = subject
        self.priority = priority
        self.role = role if role is not None else (Role.REQUEST if is_request else Role.DATA)
        self.size = size

    @property
    def is_request(self) -> bool:
        return self.role is Role.REQUEST

    def __repr__(self) -> str:
        return f"Msg({self.subject!r}, {self.priority.name}, {self.role.label})"


class Clock:
    """Monotonic seconds that only move when a test advances them."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def config(**overrides: Any) -> BackpressureConfig:
    """A BackpressureConfig with test-friendly round thresholds, then `overrides`."""
    values: dict[str, Any] = {
        "max_memory_usage_mb": 1000,
        "max_queue_size": 100,
        "max_publish_rate": 1_000_000,
        "max_cpu_usage_percent": 100,
        "recovery_threshold_percent": 70,
        "recovery_delay_ms": 5_000,
        "max_backoff_ms": 30_000,
    }
    values.update(overrides)
    return BackpressureConfig(**values)


def make_engine(
    clock: Clock,
    rules: Sequence[PolicyRule] = (),
    *,
    seed: int = SEED,
    max_subjects: int = 500,
    **overrides: Any,
) -> Engine:
    """An engine on the fake clock with a seeded rng."""
    return Engine(
        config(**overrides), rules, rng=random.Random(seed), now=clock.now, max_subjects=max_subjects
    )


def tick_load(engine: Engine, now: float, load_percent: float) -> Any:
    """Tick with a memory sample giving `load_percent` (maxMemoryUsageMB is 1000 in `config`)."""
    return engine.tick(now, memory_mb=load_percent * 10, cpu_percent=0.0)


def reconciles(engine: Engine) -> bool:
    """The accounting invariant."""
    return engine.received == engine.forwarded + engine.dropped + engine.queue_size + engine.spooled
