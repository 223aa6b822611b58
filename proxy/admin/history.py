"""Per-second samples of the sidecar's state, kept in memory for GET /api/backpressure/metrics.

Two rings bound the memory: the last hour at one point per second, and `history_seconds` (default 24 h)
at one point per minute. A minute point carries the mean of each gauge over the minute, except the
fields in MAX_FIELDS (the worst value seen) and the counters in LAST_FIELDS (the value at its end).
About 3 MB for the default 24 hours. A third ring keeps the drop counters by reason for the last
REASON_SECONDS, so the admin page can plot why messages were dropped over the last minutes.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

from policies.config import Level

# One sample is a tuple: wall-clock time (epoch seconds) followed by these values, in this order.
FIELDS: Final = (
    "currentMemoryMB",
    "currentCpuPercent",
    "currentQueueSize",
    "currentPublishRate",
    "loadPercent",
    "degradationLevel",
    "samplingRate",
    "batchSize",
    "upstreamConnected",
    "receivedMessages",
    "forwardedMessages",
    "droppedMessages",
    "sampledMessages",
    "spooledMessages",
    "spoolBytes",
    # Issue #16 (proxy/admin/signals_view.py HISTORY_FIELDS): -1 where there is nothing to show.
    "upstreamRttMs",
    "upstreamLatencyPercent",
    "queueDelayMs",
    "predictedQueuePercent",
    "queueSecondsToFull",
)
INDEX: Final = {name: i for i, name in enumerate(FIELDS)}
# Folded by taking the worst value of the interval: the operator must see a short spike.
MAX_FIELDS: Final = frozenset(
    {
        "currentMemoryMB",
        "currentQueueSize",
        "loadPercent",
        "degradationLevel",
        "spooledMessages",
        "spoolBytes",
        "upstreamRttMs",
        "upstreamLatencyPercent",
        "queueDelayMs",
        "predictedQueuePercent",
    }
)
# Cumulative counters: the value at the end of the interval.
LAST_FIELDS: Final = frozenset(
    {"receivedMessages", "forwardedMessages", "droppedMessages", "sampledMessages"}
)
# Upstream connected: the minimum (0 if it was down at any time in the interval).
MIN_FIELDS: Final = frozenset({"upstreamConnected"})
_MODES: Final = tuple(
    "max" if n in MAX_FIELDS else "last" if n in LAST_FIELDS else "min" if n in MIN_FIELDS else "mean"
    for n in FIELDS
)

FINE_SECONDS: Final = 3600
# Drop counters by reason are kept this long (one entry a second): the admin page's default window.
REASON_SECONDS: Final = 300
COARSE_STEP_S: Final = 60
# timeRange -> (seconds covered, seconds per returned point).
TIME_RANGES: Final = {"5m": (300, 1), "1h": (3600, 10), "24h": (86_400, 60)}

Sample = tuple[float, ...]


def fold(samples: Sequence[Sample]) -> Sample:
    """One point for several consecutive samples: timestamp of the last, each field by its mode."""
    last = samples[-1]
    out = [last[0]]
    n = len(samples)
    for i, mode in enumerate(_MODES, start=1):
        if mode == "last":
            out.append(last[i])
        elif mode == "max":
            out.append(max(s[i] for s in samples))
        elif mode == "min":
            out.append(min(s[i] for s in samples))
        else:
            out.append(sum(s[i] for s in samples) / n)
    return tuple(out)


class MetricHistory:
    """Rings of samples: one per second for the last hour, one per minute for `history_seconds`."""

    def __init__(self, history_seconds: int = 86_400, fine_seconds: int = FINE_SECONDS) -> None:
        self._fine: deque[Sample] = deque(maxlen=min(fine_seconds, history_seconds))
        self._coarse: deque[Sample] = deque(maxlen=max(1, history_seconds // COARSE_STEP_S))
        self._minute: list[Sample] = []
        self._minute_key: int | None = None
        self._reasons: deque[tuple[float, dict[str, int]]] = deque(
            maxlen=min(REASON_SECONDS, fine_seconds, history_seconds)
        )

    def __len__(self) -> int:
        return len(self._fine)

    def record(
        self, wall: float, values: Sequence[float], dropped_by_reason: Mapping[str, int] | None = None
    ) -> None:
        """Add the sample taken at `wall` (epoch seconds); values follow FIELDS; drops by reason optional."""
        if len(values) != len(FIELDS):
            raise ValueError(f"expected {len(FIELDS)} values, got {len(values)}")
        sample = (wall, *(float(v) for v in values))
        self._fine.append(sample)
        if dropped_by_reason is not None:
            counts = dict(dropped_by_reason)
            # Most seconds drop nothing new: share the previous dict so an idle ring costs ~nothing.
            if self._reasons and self._reasons[-1][1] == counts:
                counts = self._reasons[-1][1]
            self._reasons.append((wall, counts))
        key = int(wall // COARSE_STEP_S)
        if self._minute_key is not None and key != self._minute_key and self._minute:
            self._coarse.append(fold(self._minute))
            self._minute = []
        self._minute_key = key
        self._minute.append(sample)

    def recent(self, seconds: float, now_wall: float | None = None) -> list[Sample]:
        """Per-second samples of the last `seconds` (at most one hour)."""
        now_wall = time.time() if now_wall is None else now_wall
        since = now_wall - seconds
        out: list[Sample] = []
        for sample in reversed(self._fine):
            if sample[0] <= since:
                break
            out.append(sample)
        out.reverse()
        return out

    def dropped_by_reason(self) -> dict[float, dict[str, int]]:
        """Cumulative drop counts by reason, keyed by sample time, for the last REASON_SECONDS."""
        return dict(self._reasons)

    def points(
        self, time_range: str, now_wall: float | None = None, since: float | None = None
    ) -> list[Sample]:
        """The samples of a TIME_RANGES key, downsampled to its step, oldest first; with `since`, only
        the points newer than it (the last one may replace a point of the same step that was growing)."""
        span, step = TIME_RANGES[time_range]
        now_wall = time.time() if now_wall is None else now_wall
        after = now_wall - span
        if since is not None:
            # From the start of the step holding `since`, so that step's point is rebuilt whole.
            after = max(after, math.floor(since / step) * step - 1e-6)
        if span <= FINE_SECONDS:
            source = _newer(self._fine, after)
        else:
            source = _newer(self._coarse, after)
            if self._minute:
                source.append(fold(self._minute))
        out = source if step <= 1 else _bucket(source, step)
        if since is not None:
            # Compared in whole milliseconds, as the points show their times (a `since` copied from a
            # point's timestamp must not return that point).
            since_ms = round(since * 1000)
            out = [p for p in out if round(p[0] * 1000) > since_ms]
        return out


def _newer(ring: deque[Sample], after: float) -> list[Sample]:
    """The samples of `ring` later than `after`, oldest first (scanned from the newest end)."""
    out: list[Sample] = []
    for sample in reversed(ring):
        if sample[0] <= after:
            break
        out.append(sample)
    out.reverse()
    return out


def _bucket(samples: list[Sample], step: int) -> list[Sample]:
    out: list[Sample] = []
    group: list[Sample] = []
    key: int | None = None
    for sample in samples:
        k = int(sample[0] // step)
        if key is not None and k != key:
            out.append(fold(group))
            group = []
        key = k
        group.append(sample)
    if group:
        out.append(fold(group))
    return out


def sample_to_json(sample: Sample, dropped_by_reason: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A sample as the API shows it: ISO timestamp, the FIELDS, the level as label and value, and the
    drops by reason when they are known for that second."""
    point: dict[str, Any] = {"timestamp": iso_timestamp(sample[0])}
    for i, name in enumerate(FIELDS, start=1):
        value = sample[i]
        if not math.isfinite(value):
            value = 0.0
        point[name] = value
    level = round(point["degradationLevel"])
    point["degradationLevelValue"] = level
    point["degradationLevel"] = Level(min(4, max(0, level))).label
    point["upstreamConnected"] = point["upstreamConnected"] >= 1.0
    for name in (*LAST_FIELDS, "currentQueueSize", "batchSize", "spooledMessages", "spoolBytes"):
        point[name] = round(point[name])
    if dropped_by_reason is not None:
        point["droppedByReason"] = dict(dropped_by_reason)
    return point


def iso_timestamp(wall: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds, e.g. 2026-01-02T03:04:05.678Z."""
    millis = round(wall * 1000)
    seconds, ms = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"
