"""Load percent -> degradation level, with immediate escalation and step-by-step, delayed recovery."""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from policies.config import Level

# Lower bound of each level, in load percent (the seed's table). NONE has no bound: it never recovers.
LOWER_BOUNDS: dict[Level, float] = {
    Level.NONE: 0.0,
    Level.LOW: 70.0,
    Level.MEDIUM: 100.0,
    Level.HIGH: 150.0,
    Level.CRITICAL: 200.0,
}
HISTORY_SIZE = 1000


class Transition(NamedTuple):
    """One level change; the shell logs it once and adds the wall-clock time."""

    timestamp_monotonic: float
    from_level: Level
    to_level: Level
    load_percent: float
    dominant_signal: str


def level_for_load(load_percent: float) -> Level:
    """The level whose band holds `load_percent` (none <70, low <100, medium <150, high <200, critical)."""
    if load_percent >= 200.0:
        return Level.CRITICAL
    if load_percent >= 150.0:
        return Level.HIGH
    if load_percent >= 100.0:
        return Level.MEDIUM
    if load_percent >= 70.0:
        return Level.LOW
    return Level.NONE


def recovery_threshold(level: Level, recovery_threshold_percent: float) -> float:
    """Load below which `level` may step down: a percent of its lower bound, never above the bound itself."""
    bound = LOWER_BOUNDS[level]
    return min(bound, bound * recovery_threshold_percent / 100.0)


class LevelTracker:
    """Holds the current level; `observe` applies one load sample and returns the Transition it caused."""

    __slots__ = ("_below_since", "_delay_s", "_history", "_threshold_percent", "level")

    def __init__(
        self,
        recovery_threshold_percent: float,
        recovery_delay_ms: int,
        history_size: int = HISTORY_SIZE,
    ) -> None:
        self.level = Level.NONE
        self._threshold_percent = recovery_threshold_percent
        self._delay_s = recovery_delay_ms / 1000.0
        self._below_since: float | None = None
        self._history: deque[Transition] = deque(maxlen=history_size)

    def configure(self, recovery_threshold_percent: float, recovery_delay_ms: int) -> None:
        """Apply new hysteresis settings; a recovery timer already running keeps its start time."""
        self._threshold_percent = recovery_threshold_percent
        self._delay_s = recovery_delay_ms / 1000.0

    @property
    def below_since(self) -> float | None:
        """Since when the load has stayed below the current level's recovery threshold, or None."""
        return self._below_since

    def observe(self, now: float, load_percent: float, dominant_signal: str) -> Transition | None:
        """Escalate at once to the load's level, or step down one level after a full recovery delay."""
        current = self.level
        target = level_for_load(load_percent)
        if target > current:
            return self._move(now, target, load_percent, dominant_signal)
        if current is Level.NONE or load_percent >= recovery_threshold(current, self._threshold_percent):
            self._below_since = None
            return None
        if self._below_since is None:
            self._below_since = now
        if now - self._below_since < self._delay_s:
            return None
        lower = Level(current - 1)
        transition = self._move(now, lower, load_percent, dominant_signal)
        # Each step down needs its own full delay below the new level's threshold, counted from now.
        if lower is not Level.NONE and load_percent < recovery_threshold(lower, self._threshold_percent):
            self._below_since = now
        return transition

    def _move(self, now: float, to_level: Level, load_percent: float, dominant_signal: str) -> Transition:
        transition = Transition(now, self.level, to_level, load_percent, dominant_signal)
        self.level = to_level
        self._below_since = None
        self._history.append(transition)
        return transition

    def history(self) -> list[Transition]:
        """Recorded transitions, oldest first (at most `history_size`)."""
        return list(self._history)
