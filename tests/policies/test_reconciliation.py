"""Property: whatever the shell does, in any order, the books reconcile after every call."""

from __future__ import annotations

import random

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from policies.config import BackpressureConfig, PolicyRule, Priority
from policies.engine import Engine, Verdict
from tests.policies.fakes import Msg

SUBJECTS = ["kpi.a", "kpi.c.x", "kpi.d.y", "kpi.e"]
RULES = [PolicyRule(subject="kpi.c.>", priority="critical"), PolicyRule(subject="kpi.d.*", priority="low")]
HEADERS = [None, "low", "MEDIUM", "High", "critical", "bogus"]


class EngineMachine(RuleBasedStateMachine):
    """Drives an engine the way the shell may, checking the accounting after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 100.0
        self.spool: list[Msg] = []
        self.handed: list[Msg] = []
        # Non-critical messages counted forwarded and not yet confirmed by the (imaginary) upstream.
        self.written: list[Msg] = []
        self.prioritization_always_on = True

    @initialize(
        seed=st.integers(0, 2**16),
        queue=st.integers(1, 8),
        batching=st.booleans(),
        sampling=st.booleans(),
        breaker=st.booleans(),
        rate=st.sampled_from([5.0, 100.0, 1e6]),
    )
    def build(
        self, seed: int, queue: int, batching: bool, sampling: bool, breaker: bool, rate: float
    ) -> None:
        self.config = BackpressureConfig(
            max_memory_usage_mb=1000,
            max_queue_size=queue,
            max_publish_rate=rate,
            enable_batching=batching,
            enable_sampling=sampling,
            enable_circuit_breaker=breaker,
            recovery_delay_ms=1000,
            breaker_failure_threshold=2,
            breaker_half_open_successes=1,
            breaker_half_open_fraction=0.5,
            breaker_critical_top_subjects=2,
        )
        self.engine = Engine(self.config, RULES, rng=random.Random(seed), now=self.now, max_subjects=3)

    @rule(
        subject=st.sampled_from(SUBJECTS),
        header=st.sampled_from(HEADERS),
        is_request=st.booleans(),
        can_send=st.booleans(),
        blocked_fate=st.sampled_from(["spool", "drop", "forward", "hold"]),
    )
    def offer(
        self, subject: str, header: str | None, is_request: bool, can_send: bool, blocked_fate: str
    ) -> None:
        priority, _rule = self.engine.classify(subject, header)
        msg = Msg(subject, priority, is_request)
        decision = self.engine.offer(msg, self.now, can_send)
        if decision.verdict == Verdict.FORWARD:
            self._wrote([msg])
        if self.prioritization_always_on:
            assert all(m.priority is not Priority.CRITICAL for m in decision.evicted)
            if priority is Priority.CRITICAL:
                assert decision.verdict != Verdict.DROP
        if decision.verdict == Verdict.BLOCK:
            assert priority is Priority.CRITICAL
            if blocked_fate == "spool":
                self.engine.note_spooled(msg)
                self.spool.append(msg)
            elif blocked_fate == "drop":
                self.engine.note_dropped(msg, "spool_full")
            elif blocked_fate == "forward":
                self.engine.note_forwarded(msg)
            # "hold": the shell pauses the client and offers again later; nothing is counted.

    @rule(subject=st.sampled_from(SUBJECTS), count=st.integers(1, 6), manual=st.booleans())
    def failing_subject_with_critical_traffic(self, subject: str, count: int, manual: bool) -> None:
        # The breaker opens (by hand or by failures) while critical messages keep coming.
        if manual:
            self.engine.open_breaker(subject, self.now)
        else:
            self.engine.breaker_failure(subject, self.now)
            self.engine.breaker_failure(subject, self.now)
        for _ in range(count):
            self.offer(subject, "critical", False, True, "spool")

    def _wrote(self, msgs: list[Msg]) -> None:
        self.written.extend(m for m in msgs if m.priority is not Priority.CRITICAL)

    @rule()
    def confirmed(self) -> None:
        self.written.clear()

    @rule()
    def connection_lost(self) -> None:
        # The upstream died before a PONG confirmed what was written: the engine takes it back.
        written, self.written = self.written, []
        dropped = self.engine.take_back(written, self.now)
        if self.prioritization_always_on:
            assert all(m.priority is not Priority.CRITICAL for m in dropped)

    @precondition(lambda self: bool(self.written))
    @rule()
    def refused(self) -> None:
        msg = self.written.pop(0)
        self.engine.note_refused(msg.subject, msg.priority)

    @rule()
    def take(self) -> None:
        out = self.engine.take(self.now)
        self._wrote(out)
        deadline = self.engine.next_deadline()
        if not out:
            # Nothing due now means the next deadline is not in the past: the shell never spins.
            assert deadline is None or deadline >= self.now

    @rule(seconds=st.floats(0, 8, allow_nan=False))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(memory=st.floats(0, 3000), cpu=st.floats(0, 300), quota=st.sampled_from([None, 0.5, 2.0]))
    def tick(self, memory: float, cpu: float, quota: float | None) -> None:
        self.engine.tick(self.now, memory_mb=memory, cpu_percent=cpu, cpu_quota_cores=quota)

    @rule()
    def drain(self) -> None:
        self._wrote(self.engine.drain(self.now))

    @rule()
    def clear(self) -> None:
        removed = self.engine.clear()
        assert all(m.priority is not Priority.CRITICAL for m in removed)

    @rule(subject=st.sampled_from(SUBJECTS), action=st.sampled_from(["fail", "ok", "open", "close", "reset"]))
    def breaker(self, subject: str, action: str) -> None:
        engine = self.engine
        {
            "fail": engine.breaker_failure,
            "ok": engine.breaker_success,
            "open": engine.open_breaker,
            "close": engine.close_breaker,
            "reset": engine.reset_breaker,
        }[action](subject, self.now)

    @precondition(lambda self: bool(self.spool))
    @rule(lost=st.booleans())
    def unspool(self, lost: bool) -> None:
        msg = self.spool.pop(0)
        if lost:
            self.engine.note_spool_dropped(msg, "expired")
        else:
            self.engine.note_unspooled(msg)

    @rule()
    def shutdown_hand_off(self) -> None:
        self.handed.extend(self.engine.drain_all_for_shutdown())

    @precondition(lambda self: bool(self.handed))
    @rule(fate=st.sampled_from(["forward", "spool", "drop"]))
    def settle_one(self, fate: str) -> None:
        msg = self.handed.pop(0)
        if fate == "forward":
            self.engine.note_forwarded(msg)
        elif fate == "spool":
            self.engine.note_spooled(msg)
            self.spool.append(msg)
        else:
            self.engine.note_dropped(msg, "shutdown")

    @rule(
        queue=st.integers(1, 8),
        batching=st.booleans(),
        sampling=st.booleans(),
        prioritization=st.booleans(),
        breaker=st.booleans(),
        window=st.sampled_from([1000, 2000]),
    )
    def reconfigure(
        self, queue: int, batching: bool, sampling: bool, prioritization: bool, breaker: bool, window: int
    ) -> None:
        self.config = msgspec.structs.replace(
            self.config,
            max_queue_size=queue,
            enable_batching=batching,
            enable_sampling=sampling,
            enable_prioritization=prioritization,
            enable_circuit_breaker=breaker,
            publish_rate_window_ms=window,
        )
        self.prioritization_always_on &= prioritization
        self.engine.update_config(self.config, now=self.now)

    @invariant()
    def books_reconcile(self) -> None:
        engine = self.engine
        assert engine.received == engine.forwarded + engine.dropped + engine.queue_size + engine.spooled
        assert engine.spooled == len(self.spool)
        # Labels idle for a minute are freed (the budget follows current traffic): what they had counted
        # is kept apart, so that breakdown and totals still agree.
        freed_forwarded, freed_dropped = engine.freed_by_labels()
        assert sum(engine.forwarded_by_subject().values()) + freed_forwarded == engine.forwarded
        assert sum(engine.dropped_by_subject().values()) + freed_dropped == engine.dropped
        assert engine.sampled == engine.dropped_by_reason().get("sampling", 0)
        snapshot = engine.snapshot(self.now)
        assert (
            sum(snapshot.queue_by_priority.values()) + snapshot.parked + snapshot.handed_off
            == engine.queue_size
        )
        assert snapshot.handed_off == len(self.handed)
        assert (engine.next_deadline() is None) == (sum(snapshot.queue_by_priority.values()) == 0)
        assert len({label for label, _ in engine.forwarded_by_subject()}) <= 4


EngineMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineReconciles = EngineMachine.TestCase
