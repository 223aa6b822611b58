"""Time to saturation: a robust trend of the queue length (and spool bytes) over the recent ticks.

The slope is Theil-Sen's (the median of the slopes between every pair of samples), so a single spike moves
it no more than one sample's worth, and noise around a level gives a slope near 0. The value "now" is the
robust fit at `now` (median of y - slope * t, plus slope * now), not the last sample, so a spike in the
last sample does not leak in either. The projection `fit(now) + slope x horizon` against the capacity is
the `predicted_queue` load percent: the level the queue would have in `predictionHorizonS` at the current
trend, so the engine escalates before the limit is hit and, once the trend reverses (slope <= 0), the
signal is gone and the usual recovery applies.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

# Samples kept (one per tick): the window is also bounded in time by `window_s`.
MAX_SAMPLES = 60


class Forecast(NamedTuple):
    """The trend of one quantity: None values until enough samples."""

    samples: int
    slope_per_s: float | None
    fitted: float | None
    seconds_to_full: float | None  # None: not rising, or no capacity
    projected: float | None  # fitted + slope x horizon (never below 0)


_EMPTY = Forecast(0, None, None, None, None)


def theil_sen(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(slope, intercept) of the Theil-Sen fit of (t, y) points; None with fewer than 2 distinct times."""
    slopes: list[float] = []
    n = len(points)
    for i in range(n):
        ti, yi = points[i]
        for j in range(i + 1, n):
            tj, yj = points[j]
            if tj != ti:
                slopes.append((yj - yi) / (tj - ti))
    if not slopes:
        return None
    slope = _median(slopes)
    intercept = _median([y - slope * t for t, y in points])
    return slope, intercept


def _median(values: list[float]) -> float:
    values.sort()
    n = len(values)
    mid = n // 2
    return values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2.0


class TrendTracker:
    """A bounded ring of (now, value) samples and the forecast they give against a capacity."""

    __slots__ = ("_samples", "min_samples", "window_s")

    def __init__(self, *, window_s: float, min_samples: int, max_samples: int = MAX_SAMPLES) -> None:
        self.window_s = window_s
        self.min_samples = min_samples
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def configure(self, *, window_s: float, min_samples: int) -> None:
        self.window_s = window_s
        self.min_samples = min_samples

    def observe(self, now: float, value: float) -> None:
        """One sample at `now` (the engine's tick); samples older than the window are dropped."""
        samples = self._samples
        samples.append((now, value))
        horizon = now - self.window_s
        while samples and samples[0][0] < horizon:
            samples.popleft()

    def __len__(self) -> int:
        return len(self._samples)

    def clear(self) -> None:
        self._samples.clear()

    def forecast(self, now: float, capacity: float, horizon_s: float) -> Forecast:
        """Slope, fit at `now`, seconds until `capacity` and the value projected `horizon_s` ahead."""
        samples = self._samples
        if len(samples) < max(2, self.min_samples):
            return _EMPTY._replace(samples=len(samples))
        fit = theil_sen(list(samples))
        if fit is None:
            return _EMPTY._replace(samples=len(samples))
        slope, intercept = fit
        fitted = max(0.0, intercept + slope * now)
        to_full: float | None = None
        if slope > 0.0 and capacity > 0.0:
            to_full = max(0.0, capacity - fitted) / slope
        projected = max(0.0, fitted + slope * horizon_s)
        return Forecast(len(samples), slope, fitted, to_full, projected)


def predicted_percent(forecast: Forecast, capacity: float) -> float:
    """Load percent of the projection when the trend rises (0 otherwise: the reactive signal covers it)."""
    slope = forecast.slope_per_s
    if slope is None or slope <= 0.0 or capacity <= 0.0 or forecast.projected is None:
        return 0.0
    return min(forecast.projected, 2.0 * capacity) * 100.0 / capacity
