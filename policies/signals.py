"""Signals beside the four local ones: upstream round-trip time, queue delay and JetStream stream fill.

Each is turned into a load percent on the same scale as memory or queue length (100 = the threshold, the
floor of `medium`), so that policies/levels.py applies the same bands and hysteresis to it:

- `upstream_latency`: a smoothed RTT (EWMA, as TCP's SRTT) against a windowed minimum (the baseline, as
  Netflix's concurrency-limits and Envoy's adaptive concurrency measure a "minimum RTT"). 0 at the
  baseline, 100 at `upstreamLatencyRatio` x baseline (or baseline + `upstreamLatencyFloorMs`, whichever is
  later: a 50 us loopback baseline must not turn 150 us of jitter into a level), 200 at twice that excess.
  Nothing (None) until `minRttSamples` samples were seen.
- `queue_delay`: CoDel's standing delay: the sojourn of the oldest queued message counts only once it has
  stayed above `queueDelayTargetMs` for a whole `queueDelayIntervalMs` and the queue did not shrink over
  that interval (CoDel's "bad queue"; a queue draining after a burst is a "good queue" on its way out,
  and its length already counts); then 100 x sojourn / target. Checked again at every interval.
- `stream_fill`: the fuller of bytes and messages against a stream's limits; 100 at
  `streamFillThreshold`, 200 when full (linear in between). It raises the level of the priority class
  publishing into that stream only (see Engine), never the global one.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from policies.config import Priority

# EWMA weight of a new RTT sample (TCP's SRTT uses 1/8, RFC 6298).
RTT_ALPHA = 0.125
# The baseline window is kept as this many per-slot minima (bounded memory whatever the sample rate).
BASELINE_SLOTS = 10
# A stream reading older than this is forgotten (the monitor polls every few seconds).
STREAM_STALE_S = 60.0
# Streams tracked at once (readings beyond are ignored; the monitor has the same bound).
MAX_STREAMS = 64


class RttReading(NamedTuple):
    """What the RTT tracker shows: None values until enough samples."""

    samples: int
    rtt_s: float | None
    baseline_s: float | None
    ratio: float | None
    last_s: float | None


class RttTracker:
    """Smoothed RTT and its windowed minimum, from PING/PONG (or PubAck) round trips."""

    __slots__ = ("_last", "_slot_s", "_slots", "_srtt", "min_samples", "samples")

    def __init__(self, *, baseline_window_s: float, min_samples: int) -> None:
        self.min_samples = min_samples
        self.samples = 0
        self._srtt: float | None = None
        self._last: float | None = None
        self._slot_s = max(baseline_window_s / BASELINE_SLOTS, 1e-3)
        # (slot index, minimum seen in that slot), oldest first, at most BASELINE_SLOTS + 1.
        self._slots: deque[list[float]] = deque(maxlen=BASELINE_SLOTS + 1)

    def configure(self, *, baseline_window_s: float, min_samples: int) -> None:
        """New window and sample floor; the samples seen so far are kept."""
        self.min_samples = min_samples
        self._slot_s = max(baseline_window_s / BASELINE_SLOTS, 1e-3)

    def observe(self, now: float, rtt_s: float) -> None:
        """One round trip of `rtt_s` seconds, completed at `now`."""
        if rtt_s < 0.0:
            return
        self.samples += 1
        self._last = rtt_s
        srtt = self._srtt
        self._srtt = rtt_s if srtt is None else srtt + RTT_ALPHA * (rtt_s - srtt)
        slot = float(int(now // self._slot_s))
        slots = self._slots
        if slots and slots[-1][0] == slot:
            if rtt_s < slots[-1][1]:
                slots[-1][1] = rtt_s
        else:
            slots.append([slot, rtt_s])
        oldest = slot - BASELINE_SLOTS
        while slots and slots[0][0] < oldest:
            slots.popleft()

    def reset(self) -> None:
        """Forget everything (a new upstream server has its own baseline)."""
        self.samples = 0
        self._srtt = None
        self._last = None
        self._slots.clear()

    def reading(self, in_flight_s: float = 0.0) -> RttReading:
        """The smoothed RTT (at least `in_flight_s`, the age of the oldest PING still unanswered: a server
        that stopped answering is at least that slow), its baseline and their ratio."""
        if self.samples < self.min_samples or self._srtt is None or not self._slots:
            return RttReading(self.samples, None, None, None, self._last)
        rtt = max(self._srtt, in_flight_s)
        baseline = min(s[1] for s in self._slots)
        ratio = rtt / baseline if baseline > 0 else None
        return RttReading(self.samples, rtt, baseline, ratio, self._last)


def latency_percent(rtt_s: float, baseline_s: float, ratio_threshold: float, floor_s: float) -> float:
    """Load percent of an RTT: 0 at the baseline, 100 at max(ratio x baseline, baseline + floor)."""
    threshold = max(baseline_s * ratio_threshold, baseline_s + floor_s)
    span = max(threshold - baseline_s, 1e-9)
    return max(0.0, rtt_s - baseline_s) * 100.0 / span


class QueueDelay:
    """CoDel's standing queue: the oldest message's sojourn, counted once above target for an interval."""

    __slots__ = ("_interval_start", "_ref_length", "_standing", "interval_s", "sojourn_s", "target_s")

    def __init__(self, target_s: float, interval_s: float) -> None:
        self.target_s = target_s
        self.interval_s = interval_s
        self.sojourn_s = 0.0
        self._interval_start: float | None = None
        self._ref_length = 0
        self._standing = False

    def configure(self, target_s: float, interval_s: float) -> None:
        self.target_s = target_s
        self.interval_s = interval_s

    def observe(self, now: float, sojourn_s: float, length: int, paced_s: float = 0.0) -> float:
        """Load percent for the oldest queued message's sojourn at `now`, with `length` messages queued
        (0 when off or not standing). `paced_s`: the part of the sojourn the rate ceiling explains (the
        queue's length at the ceiling's pace); only the delay beyond it counts."""
        self.sojourn_s = sojourn_s
        target = self.target_s
        sojourn_s -= paced_s
        if target <= 0.0 or sojourn_s < target:
            self._interval_start = None
            self._standing = False
            return 0.0
        if self._interval_start is None:
            self._interval_start = now
            self._ref_length = length
        elif now - self._interval_start >= self.interval_s:
            self._standing = length >= self._ref_length
            self._interval_start = now
            self._ref_length = length
        return sojourn_s * 100.0 / target if self._standing else 0.0

    def standing(self, now: float) -> bool:
        """True while the delay stands: above target, and the queue did not shrink over the last interval."""
        return self._standing


class StreamReading(NamedTuple):
    """One `$JS.API.STREAM.INFO` answer, reduced to what the fill signal needs (limits <= 0: none)."""

    name: str
    priority: Priority
    subjects: tuple[str, ...]
    bytes: int
    max_bytes: int
    msgs: int
    max_msgs: int
    discard: str  # "old" or "new" (new: a full stream refuses publishes)
    at: float


def stream_fill(reading: StreamReading) -> float:
    """The fuller of bytes and messages against the stream's limits, 0..1 (0 without limits)."""
    fill = 0.0
    if reading.max_bytes > 0:
        fill = reading.bytes / reading.max_bytes
    if reading.max_msgs > 0:
        fill = max(fill, reading.msgs / reading.max_msgs)
    return min(fill, 1.0)


def fill_percent(fill: float, threshold: float) -> float:
    """Load percent of a stream fill: 100 at `threshold`, 200 when full, linear on both sides."""
    if threshold <= 0.0:
        return 0.0
    if fill <= threshold or threshold >= 1.0:
        return fill * 100.0 / threshold
    return 100.0 + (fill - threshold) * 100.0 / (1.0 - threshold)


def refuses_new(reading: StreamReading, fill: float) -> bool:
    """A full stream with `discard: new` refuses further publishes (JetStream answers an error)."""
    return reading.discard == "new" and fill >= 1.0
