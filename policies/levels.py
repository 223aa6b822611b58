"""Load percent -> degradation level: immediate escalation, and recovery that returns.

Recovery rule (docs/backpressure.md, section 2): once the load has stayed below the current level's
*leave bound* for `recoveryDelayMs`, the level goes straight to the level the load alone gives. The leave
bound of `low` is `recoveryThresholdPercent` (the load under which the sidecar returns to none, capped at
70); that of a higher level is its band's floor less a HYSTERESIS margin (medium 90, high 135, critical 180).
A level reached by recovery is never `none` while the load is at or above `recoveryThresholdPercent`.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from policies.config import Level

# Lower bound of each level, in load percent (the seed's table).
LOWER_BOUNDS: dict[Level, float] = {
    Level.NONE: 0.0,
    Level.LOW: 70.0,
    Level.MEDIUM: 100.0,
    Level.HIGH: 150.0,
    Level.CRITICAL: 200.0,
}
# Below medium, high and critical, the load must fall this share under the band's floor to leave it.
HYSTERESIS = 0.1
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


def none_threshold(recovery_threshold_percent: float) -> float:
    """The load under which the sidecar returns to none: recoveryThresholdPercent, at most 70."""
    return min(recovery_threshold_percent, LOWER_BOUNDS[Level.LOW])


def leave_bound(level: Level, recovery_threshold_percent: float) -> float:
    """The load below which `level` may be left (after the recovery delay); 0 for none."""
    if level is Level.NONE:
        return 0.0
    if level is Level.LOW:
        return none_threshold(recovery_threshold_percent)
    return LOWER_BOUNDS[level] * (1.0 - HYSTERESIS)


def recovered_level(load_percent: float, recovery_threshold_percent: float) -> Level:
    """The level recovery moves to: the load's own level, but `low` until below the none threshold."""
    level = level_for_load(load_percent)
    if level is Level.NONE and load_percent >= none_threshold(recovery_threshold_percent):
        return Level.LOW
    return level


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
        """Since when the load has stayed below the current level's leave bound, or None."""
        return self._below_since

    def escalate(self, now: float, load_percent: float, dominant_signal: str) -> Transition | None:
        """Move up at once if the load's level is above the current one (no recovery: between ticks)."""
        target = level_for_load(load_percent)
        if target > self.level:
            return self._move(now, target, load_percent, dominant_signal)
        return None

    def observe(self, now: float, load_percent: float, dominant_signal: str) -> Transition | None:
        """Escalate at once to the load's level, or recover once below the leave bound for the delay."""
        current = self.level
        target = level_for_load(load_percent)
        if target > current:
            return self._move(now, target, load_percent, dominant_signal)
        if current is Level.NONE or load_percent >= leave_bound(current, self._threshold_percent):
            self._below_since = None
            return None
        if self._below_since is None:
            self._below_since = now
        if now - self._below_since < self._delay_s:
            return None
        return self._move(
            now, recovered_level(load_percent, self._threshold_percent), load_percent, dominant_signal
        )

    def _move(self, now: float, to_level: Level, load_percent: float, dominant_signal: str) -> Transition:
        transition = Transition(now, self.level, to_level, load_percent, dominant_signal)
        self.level = to_level
        self._below_since = None
        self._history.append(transition)
        return transition

    def history(self) -> list[Transition]:
        """Recorded transitions, oldest first (at most `history_size`)."""
        return list(self._history)
