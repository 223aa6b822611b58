"""The publish-rate ceiling (token bucket) and the incoming-rate meter (moving window of counted slots)."""

from __future__ import annotations

import math

METER_SLOTS = 10


class TokenBucket:
    """`rate` tokens per second up to `burst`; starts full. One token lets one message go upstream."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def configure(self, rate: float, burst: float, now: float) -> None:
        """New rate and burst; tokens already earned are kept up to the new burst."""
        self.refill(now)
        self.rate = rate
        self.burst = burst
        self.tokens = min(self.tokens, burst)

    def refill(self, now: float) -> float:
        """Credit the time elapsed since the last call and return the tokens available."""
        elapsed = now - self.stamp
        if elapsed > 0.0:
            tokens = self.tokens + elapsed * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.stamp = now
        return self.tokens

    def try_take(self, now: float) -> bool:
        """Take one token if one is available at `now`."""
        elapsed = now - self.stamp
        tokens = self.tokens
        if elapsed > 0.0:
            tokens += elapsed * self.rate
            if tokens > self.burst:
                tokens = self.burst
            self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False

    def spend(self, now: float) -> None:
        """Spend one token for a message that never waits (replies, control): the bucket may go into
        debt, at most one burst deep, and queued data then waits for it to refill."""
        self.refill(now)
        tokens = self.tokens - 1.0
        self.tokens = tokens if tokens > -self.burst else -self.burst

    def take(self, count: int) -> None:
        """Spend `count` tokens (after `refill`); the caller checked they were available."""
        self.tokens -= count

    def time_for(self, count: float) -> float:
        """Monotonic time at which `count` tokens will be available (inf if above the burst)."""
        if count > self.burst:
            return math.inf
        missing = count - self.tokens
        if missing <= 0.0:
            return self.stamp
        return self.stamp + missing / self.rate


class RateMeter:
    """Events per second over a moving window, counted in `slots` fixed slots (the current one partial).

    The estimate divides the count of the previous `slots - 1` slots plus the current one by the time they
    span, so a steady rate reads true and a process that just started reads low, never high.
    """

    __slots__ = ("_counts", "_current", "_index", "_slot_end", "_slots", "_width")

    def __init__(self, window_s: float, now: float, slots: int = METER_SLOTS) -> None:
        self._slots = slots
        self._width = window_s / slots
        self._counts = [0] * slots
        self._index = int(now // self._width)
        self._current = 0
        self._slot_end = (self._index + 1) * self._width

    @property
    def window_s(self) -> float:
        """Length of the window in seconds."""
        return self._width * self._slots

    def add(self, now: float) -> None:
        """Count one event at `now`."""
        if now >= self._slot_end:
            self._advance(now)
        self._current += 1

    def add_many(self, now: float, n: int) -> None:
        """Count `n` events at `now`."""
        if now >= self._slot_end:
            self._advance(now)
        self._current += n

    def _advance(self, now: float) -> None:
        # max(): at a float edge `now // width` can disagree with `now >= slot_end`; the latter wins.
        index = max(int(now // self._width), self._index + 1)
        counts = self._counts
        slots = self._slots
        if index - self._index >= slots:
            counts[:] = [0] * slots
        else:
            counts[self._index % slots] = self._current
            for skipped in range(self._index + 1, index + 1):
                counts[skipped % slots] = 0
        self._index = index
        self._current = 0
        self._slot_end = (index + 1) * self._width

    def rate(self, now: float) -> float:
        """Events per second over the window ending at `now`."""
        if now >= self._slot_end:
            self._advance(now)
        total = sum(self._counts) + self._current
        span = (self._slots - 1) * self._width + (now - self._index * self._width)
        return total / span if span > 0.0 else 0.0
