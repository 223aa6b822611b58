"""Per-subject counts of recently offered non-critical messages, bounded, to find the busiest subjects."""

from __future__ import annotations

import heapq

DEFAULT_MAX_TRACKED = 1000


class SubjectTraffic:
    """Counts per subject over the current window and the previous one.

    At most `max_tracked` subjects are counted per window; a subject first seen when the window is full
    waits for the next window. `rotate` is driven by the engine's tick.
    """

    __slots__ = ("_current", "_max_tracked", "_previous", "_window_s", "_window_start")

    def __init__(self, window_s: float, now: float, max_tracked: int = DEFAULT_MAX_TRACKED) -> None:
        self._window_s = window_s
        self._window_start = now
        self._max_tracked = max_tracked
        self._current: dict[str, int] = {}
        self._previous: dict[str, int] = {}

    def configure(self, window_s: float) -> None:
        """A new window length, effective from the next rotation."""
        self._window_s = window_s

    def add(self, subject: str) -> None:
        """Count one message offered on `subject`."""
        current = self._current
        count = current.get(subject)
        if count is not None:
            current[subject] = count + 1
        elif len(current) < self._max_tracked:
            current[subject] = 1

    def add_many(self, subject: str, n: int) -> None:
        """Count `n` offered messages of `subject` at once."""
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
        self._previous = self._current if elapsed < 2 * self._window_s else {}
        self._current = {}
        self._window_start = now

    def top(self, count: int) -> list[str]:
        """The `count` busiest subjects over both windows, busiest first (ties: first seen first)."""
        totals = dict(self._previous)
        for subject, n in self._current.items():
            totals[subject] = totals.get(subject, 0) + n
        return heapq.nlargest(count, totals, key=totals.__getitem__)

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)
