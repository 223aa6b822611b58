"""Per-subject circuit breakers: closed -> open -> half-open -> closed, with doubling backoff.

Only subjects with something to remember have a record (open, half-open, or closed with recent
failures); the board holds at most `max_tracked` records.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from policies.sampling import SHARE_ONE, share_of

if TYPE_CHECKING:
    import random

    from policies.config import BackpressureConfig

DEFAULT_MAX_TRACKED = 1000
CHANGES_SIZE = 1000

# Why a breaker is open.
REASON_FAILURES = "failures"
REASON_CRITICAL = "critical_level"
REASON_MANUAL = "manual"

# What `gate` tells the engine to do with a message.
PASS = 0
DROP = 1
HOLD = 2  # a critical message for an open breaker: park it until the breaker is no longer open


class BreakerState(enum.IntEnum):
    """State of one subject's breaker."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2

    @property
    def label(self) -> str:
        """Lower-case name, as the admin API and the metrics show it."""
        return self.name.lower()


class BreakerSnapshot(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One breaker as the admin API shows it; times are monotonic seconds."""

    subject: str
    state: str
    reason: str | None
    opened_at: float | None
    failures: int
    next_attempt_at: float | None
    backoff_ms: int


class BreakerChange(NamedTuple):
    """One breaker state change, for the shell to log once."""

    timestamp_monotonic: float
    subject: str
    from_state: BreakerState
    to_state: BreakerState
    reason: str | None


class Breaker:
    """Mutable state of one subject's breaker."""

    __slots__ = (
        "backoff_ms",
        "failures",
        "next_attempt_at",
        "opened_at",
        "reason",
        "state",
        "subject",
        "successes",
    )

    def __init__(self, subject: str, backoff_ms: int) -> None:
        self.subject = subject
        self.state = BreakerState.CLOSED
        self.reason: str | None = None
        self.opened_at: float | None = None
        self.failures = 0
        self.successes = 0
        self.backoff_ms = backoff_ms
        self.next_attempt_at: float | None = None


class BreakerBoard:
    """All breakers; the engine asks `gate` for each message of a subject that has a record."""

    __slots__ = (
        "_base_delay_ms",
        "_cap_ms",
        "_changes",
        "_failure_threshold",
        "_half_open_fraction",
        "_half_open_successes",
        "_max_tracked",
        "records",
    )

    def __init__(self, config: BackpressureConfig, max_tracked: int = DEFAULT_MAX_TRACKED) -> None:
        self.records: dict[str, Breaker] = {}
        self._max_tracked = max_tracked
        self._changes: deque[BreakerChange] = deque(maxlen=CHANGES_SIZE)
        self.configure(config)

    def configure(self, config: BackpressureConfig) -> None:
        """New settings; breakers already open keep their current backoff and next attempt time."""
        self._failure_threshold = config.breaker_failure_threshold
        self._half_open_fraction = config.breaker_half_open_fraction
        self._half_open_successes = config.breaker_half_open_successes
        self._base_delay_ms = config.recovery_delay_ms
        self._cap_ms = config.backoff_cap_ms

    # -- per message ---------------------------------------------------------------------------------
    def gate(self, subject: str, now: float, rng: random.Random, critical: bool) -> int:
        """PASS, DROP or HOLD for one message; an open breaker whose delay is over turns half-open here.

        Critical messages are never dropped: HOLD while open, PASS (outside the trial draw) while half-open,
        and PASS through a breaker the critical level opened (it sheds a heavy hitter's load, not a subject
        the upstream refuses: parking its critical messages would only stall their publishers).
        """
        breaker = self.records.get(subject)
        if breaker is None or breaker.state is BreakerState.CLOSED:
            return PASS
        share = self.gate_group(breaker, now, critical)
        if share is None:
            return HOLD
        if share == SHARE_ONE:
            return PASS
        if share == 0:
            return DROP
        return PASS if rng.random() < self._half_open_fraction else DROP  # a trial draw

    def gate_group(self, breaker: Breaker, now: float, critical: bool) -> int | None:
        """The share of `breaker`'s messages that pass (policies.sampling fixed point), for a group decided
        at once (Engine.decide_run) and for `gate`, which draws each trial: 0 while open, SHARE_ONE for
        critical messages (None, parked, while open, except behind a breaker the critical level opened),
        `halfOpenFraction` while half-open. An open breaker whose delay is over turns half-open here."""
        state = breaker.state
        if state is BreakerState.OPEN:
            due = breaker.next_attempt_at
            if due is None or now < due:
                if not critical:
                    return 0
                return SHARE_ONE if breaker.reason == REASON_CRITICAL else None
            self._set_state(breaker, BreakerState.HALF_OPEN, now)
        if critical or state is BreakerState.CLOSED:
            return SHARE_ONE
        return share_of(self._half_open_fraction)

    # -- outcomes reported by the shell ----------------------------------------------------------------
    def failure(self, subject: str, now: float) -> None:
        """A forward to `subject` failed: count it, open at the threshold, reopen a half-open breaker."""
        breaker = self.records.get(subject)
        if breaker is None:
            if not self._make_room():
                return
            breaker = self.records[subject] = Breaker(subject, self._base_delay_ms)
        state = breaker.state
        if state is BreakerState.CLOSED:
            breaker.failures += 1
            if breaker.failures >= self._failure_threshold:
                self._open(breaker, now, REASON_FAILURES)
        elif state is BreakerState.HALF_OPEN:
            breaker.failures += 1
            breaker.backoff_ms = min(breaker.backoff_ms * 2, self._cap_ms)
            self._open(breaker, now, breaker.reason or REASON_FAILURES)
        # OPEN: a message sent before it opened; it changes nothing.

    def success(self, subject: str, now: float, level_critical: bool) -> None:
        """A forward to `subject` succeeded: reset the failure count, count a half-open trial success."""
        breaker = self.records.get(subject)
        if breaker is None:
            return
        state = breaker.state
        if state is BreakerState.CLOSED:
            del self.records[subject]
        elif state is BreakerState.HALF_OPEN:
            breaker.successes += 1
            self._maybe_close(breaker, now, level_critical)

    # -- timers and the critical level ---------------------------------------------------------------
    def advance(self, now: float, level_critical: bool) -> None:
        """Turn due open breakers half-open; below critical, close every breaker the critical level opened."""
        for breaker in list(self.records.values()):
            if breaker.reason == REASON_CRITICAL and not level_critical:
                if breaker.state is not BreakerState.CLOSED:
                    self._set_state(breaker, BreakerState.CLOSED, now)
                del self.records[breaker.subject]
                continue
            if breaker.state is BreakerState.OPEN:
                due = breaker.next_attempt_at
                if due is not None and now >= due:
                    self._set_state(breaker, BreakerState.HALF_OPEN, now)
            if breaker.state is BreakerState.HALF_OPEN:
                self._maybe_close(breaker, now, level_critical)

    def open_busiest(self, subjects: Iterable[str], now: float, limit: int) -> None:
        """Open (reason critical_level) the closed ones among `subjects` (the heavy hitters); at most
        `limit` such breakers open or half-open at once."""
        active = sum(
            1
            for b in self.records.values()
            if b.reason == REASON_CRITICAL and b.state is not BreakerState.CLOSED
        )
        for subject in subjects:
            if active >= limit:
                return
            breaker = self.records.get(subject)
            if breaker is None:
                if not self._make_room():
                    return
                breaker = self.records[subject] = Breaker(subject, self._base_delay_ms)
            elif breaker.state is not BreakerState.CLOSED:
                continue
            self._open(breaker, now, REASON_CRITICAL)
            active += 1

    # -- by hand ---------------------------------------------------------------------------------------
    def open(self, subject: str, now: float) -> bool:
        """Open by hand: stays open until closed or reset by hand. False when the board is full."""
        breaker = self.records.get(subject)
        if breaker is None:
            if not self._make_room():
                return False
            breaker = self.records[subject] = Breaker(subject, self._base_delay_ms)
        self._open(breaker, now, REASON_MANUAL)
        return True

    def close(self, subject: str, now: float) -> bool:
        """Close by hand, keeping the failure count and backoff; False when there was nothing to close."""
        breaker = self.records.get(subject)
        if breaker is None or breaker.state is BreakerState.CLOSED:
            return False
        self._set_state(breaker, BreakerState.CLOSED, now)
        breaker.reason = None
        breaker.opened_at = None
        breaker.next_attempt_at = None
        breaker.successes = 0
        if breaker.failures == 0:
            del self.records[subject]
        return True

    def reset(self, subject: str, now: float) -> bool:
        """Forget `subject` entirely (closed, no failures, base backoff); False when it had no record."""
        breaker = self.records.pop(subject, None)
        if breaker is None:
            return False
        if breaker.state is not BreakerState.CLOSED:
            self._changes.append(BreakerChange(now, subject, breaker.state, BreakerState.CLOSED, None))
        return True

    def forget_automatic(self, now: float) -> None:
        """Drop every record not opened by hand (the circuit breaker was switched off)."""
        for subject, breaker in list(self.records.items()):
            if breaker.reason != REASON_MANUAL:
                self.reset(subject, now)

    # -- reading ---------------------------------------------------------------------------------------
    def state_of(self, subject: str) -> BreakerState:
        """Current state of `subject`'s breaker (CLOSED when it has no record)."""
        breaker = self.records.get(subject)
        return BreakerState.CLOSED if breaker is None else breaker.state

    def open_count(self) -> int:
        """Breakers not closed (open or half-open)."""
        return sum(1 for b in self.records.values() if b.state is not BreakerState.CLOSED)

    def snapshots(self) -> list[BreakerSnapshot]:
        """Every tracked breaker."""
        return [
            BreakerSnapshot(
                subject=b.subject,
                state=b.state.label,
                reason=b.reason,
                opened_at=b.opened_at,
                failures=b.failures,
                next_attempt_at=b.next_attempt_at,
                backoff_ms=b.backoff_ms,
            )
            for b in self.records.values()
        ]

    def pop_changes(self) -> list[BreakerChange]:
        """State changes since the last call, oldest first (at most CHANGES_SIZE kept)."""
        changes = list(self._changes)
        self._changes.clear()
        return changes

    # -- internals -------------------------------------------------------------------------------------
    def _open(self, breaker: Breaker, now: float, reason: str) -> None:
        breaker.reason = reason
        breaker.opened_at = now
        breaker.successes = 0
        breaker.next_attempt_at = None if reason == REASON_MANUAL else now + breaker.backoff_ms / 1000.0
        self._set_state(breaker, BreakerState.OPEN, now)

    def _maybe_close(self, breaker: Breaker, now: float, level_critical: bool) -> None:
        if breaker.successes < self._half_open_successes:
            return
        if breaker.reason == REASON_CRITICAL and level_critical:
            return
        self._set_state(breaker, BreakerState.CLOSED, now)
        del self.records[breaker.subject]

    def _set_state(self, breaker: Breaker, state: BreakerState, now: float) -> None:
        if breaker.state is not state or state is BreakerState.OPEN:
            self._changes.append(BreakerChange(now, breaker.subject, breaker.state, state, breaker.reason))
        breaker.state = state

    def _make_room(self) -> bool:
        if len(self.records) < self._max_tracked:
            return True
        for subject, breaker in self.records.items():
            if breaker.state is BreakerState.CLOSED:
                del self.records[subject]
                return True
        return False
