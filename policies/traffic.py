"""Per-subject counts of recently offered application messages, bounded, to find the heavy hitters."""

from __future__ import annotations

import heapq

DEFAULT_MAX_TRACKED = 1000


class SubjectTraffic:
    """Counts per subject over the current window and the previous one.

    At most `max_tracked` subjects are counted per window; a subject first seen when the window is full
    waits for the next window. `rotate` is driven by the engine's tick.
    """

    __slots__ = (
        "_current",
        "_current_total",
        "_max_tracked",
        "_previous",
        "_previous_span",
        "_previous_total",
        "_window_s",
        "_window_start",
    )

    def __init__(self, window_s: float, now: float, max_tracked: int = DEFAULT_MAX_TRACKED) -> None:
        self._window_s = window_s
        self._window_start = now
        self._max_tracked = max_tracked
        self._current: dict[str, int] = {}
        self._previous: dict[str, int] = {}
        # Every message counted, tracked subject or not: the denominator of a subject's share.
        self._current_total = 0
        self._previous_total = 0
        self._previous_span = 0.0

    def configure(self, window_s: float) -> None:
        """A new window length, effective from the next rotation."""
        self._window_s = window_s

    def add(self, subject: str) -> None:
        """Count one message offered on `subject`."""
        self._current_total += 1
        current = self._current
        count = current.get(subject)
        if count is not None:
            current[subject] = count + 1
        elif len(current) < self._max_tracked:
            current[subject] = 1

    def add_many(self, subject: str, n: int) -> None:
        """Count `n` offered messages of `subject` at once."""
        self._current_total += n
        current = self._current
        count = current.get(subject)
        if count is not None:
            current[subject] = count + n
        elif len(current) < self._max_tracked:
            current[subject] = n

    def rotate(self, now: float) -> None:
        """Start a new window when the current one is over; a long gap forgets both windows."""
        elapsed = now - self._window_start
        if elapsed < self._window_s:
            return
        recent = elapsed < 2 * self._window_s
        self._previous = self._current if recent else {}
        self._previous_total = self._current_total if recent else 0
        self._previous_span = elapsed if recent else 0.0
        self._current = {}
        self._current_total = 0
        self._window_start = now

    def top(self, count: int) -> list[str]:
        """The `count` busiest subjects over both windows, busiest first (ties: first seen first)."""
        totals = dict(self._previous)
        for subject, n in self._current.items():
            totals[subject] = totals.get(subject, 0) + n
        return heapq.nlargest(count, totals, key=totals.__getitem__)

    def heavy_hitters(self, now: float, share: float, floor_rate: float, limit: int) -> list[str]:
        """Subjects that carry at least `share` of the offered load over both windows, heaviest first, at
        most `limit`. The load is at least `floor_rate` messages per second, so that a quiet subject is
        never a heavy hitter because little else is offered."""
        span = self._previous_span + max(0.0, now - self._window_start)
        total = max(float(self._previous_total + self._current_total), floor_rate * span)
        if total <= 0.0:
            return []
        threshold = share * total
        totals = dict(self._previous)
        for subject, n in self._current.items():
            totals[subject] = totals.get(subject, 0) + n
        heavy = [subject for subject, n in totals.items() if n >= threshold]
        heavy.sort(key=totals.__getitem__, reverse=True)
        return heavy[:limit]

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)
