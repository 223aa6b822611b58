"""Throughput of Engine.classify + Engine.offer at level none (direct forward) and at level high.

Run from the repository root: .venv/bin/python -m bench.bench_engine [--seconds 1.0] [--json]
(`make bench` runs it too, through bench.run.)
"""

from __future__ import annotations

import argparse
import json
import random
import time

from policies.config import BackpressureConfig, Level, PolicyRule, Priority
from policies.engine import Engine
from policies.roles import Role

SUBJECTS = [f"kpi.{team}.metric{i}" for team in ("marketing", "payment", "onboarding") for i in range(20)]
PRIORITIES = (Priority.LOW, Priority.MEDIUM, Priority.MEDIUM, Priority.HIGH, Priority.CRITICAL)


class Msg:
    """A minimal engine item."""

    __slots__ = ("priority", "role", "size", "subject")

    def __init__(self, subject: str, priority: Priority, role: Role = Role.DATA) -> None:
        self.subject = subject
        self.priority = priority
        self.role = role
        self.size = 128


def make_engine() -> Engine:
    config = BackpressureConfig(max_publish_rate=1e12, max_queue_size=100_000, max_memory_usage_mb=100)
    rules = [PolicyRule(subject="kpi.payment.>", priority="critical"), PolicyRule(subject="kpi.*.metric1")]
    return Engine(config, rules, rng=random.Random(1234), now=0.0)


def run_offer(engine: Engine, messages: list[Msg], seconds: float, take_every: int) -> float:
    """Offer messages in a loop for about `seconds`; returns offers per second."""
    offer = engine.offer
    take = engine.take
    count = 0
    now = 1.0
    start = time.perf_counter()
    deadline = start + seconds
    n = len(messages)
    while time.perf_counter() < deadline:
        for i in range(10_000):
            offer(messages[i % n], now, True)
            if take_every and i % take_every == 0:
                take(now)
            now += 1e-6
        count += 10_000
    return count / (time.perf_counter() - start)


def run_classify_offer(engine: Engine, seconds: float) -> float:
    """classify() then offer() of a new item each time, as the shell does; returns messages per second."""
    classify = engine.classify
    offer = engine.offer
    count = 0
    now = 1.0
    start = time.perf_counter()
    deadline = start + seconds
    subjects = SUBJECTS
    n = len(subjects)
    while time.perf_counter() < deadline:
        for i in range(10_000):
            subject = subjects[i % n]
            priority, _rule = classify(subject, None)
            offer(Msg(subject, priority), now, True)
            now += 1e-6
        count += 10_000
    return count / (time.perf_counter() - start)


def run(seconds: float) -> dict[str, float]:
    """The three engine benchmarks; messages per second keyed by name."""
    messages = [Msg(s, Priority.MEDIUM) for s in SUBJECTS]
    engine = make_engine()
    assert engine.level is Level.NONE
    rate_none = run_offer(engine, messages, seconds, take_every=0)
    assert engine.queue_size == 0, "level none with can_send must forward directly"
    rate_none_classify = run_classify_offer(make_engine(), seconds)

    engine = make_engine()
    engine.tick(1.0, memory_mb=170)  # 170 % of maxMemoryUsageMB -> high
    assert engine.level is Level.HIGH
    mixed = [Msg(s, PRIORITIES[i % len(PRIORITIES)]) for i, s in enumerate(SUBJECTS)]
    rate_high = run_offer(engine, mixed, seconds, take_every=20)
    return {
        "Engine.offer level none": rate_none,
        "Engine.classify+offer level none": rate_none_classify,
        "Engine.offer level high": rate_high,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args()
    results = run(args.seconds)
    if args.json:
        print(json.dumps(results))
        return
    rate_none = results["Engine.offer level none"]
    rate_none_classify = results["Engine.classify+offer level none"]
    rate_high = results["Engine.offer level high"]
    print(
        f"offer() at level none (forward):           {rate_none:12,.0f} ops/s  ({1e6 / rate_none:.2f} us/op)"
    )
    print(
        f"classify()+offer() at level none:          {rate_none_classify:12,.0f} ops/s"
        f"  ({1e6 / rate_none_classify:.2f} us/op)"
    )
    print(
        f"offer() at level high (mixed, take/20):    {rate_high:12,.0f} ops/s  ({1e6 / rate_high:.2f} us/op)"
    )


if __name__ == "__main__":
    main()
