"""Message counters that reconcile, broken down by a bounded set of subject labels.

`received == forwarded + dropped + queued + spooled` is the engine's invariant; this module holds the
plain ints. Per-subject breakdowns keep at most `max_subjects` distinct subjects as labels (first come,
first labelled); every other subject is folded into OTHER_LABEL, so any number of subjects costs bounded
memory.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from policies.batching import SIZE_CLASSES, size_class_index
from policies.config import Priority

OTHER_LABEL = "_other"
DEFAULT_MAX_SUBJECTS = 500
# Upper bounds (seconds) of the publish-latency histogram buckets; the last bucket is +Inf.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class LatencyHistogram:
    """Bucket counts (not cumulative; one extra bucket for +Inf), sum and count of observed latencies."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one latency."""
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.count += 1
        self.total += seconds


class SubjectCounters:
    """Counters of one subject label: forwards by priority, drops by reason, batches by size class."""

    __slots__ = ("batches", "dropped", "forwarded", "label", "latency")

    def __init__(self, label: str) -> None:
        self.label = label
        # Indexed by Priority value (index 0 unused).
        self.forwarded = [0] * (len(Priority) + 1)
        self.dropped: dict[str, int] = {}
        self.batches = [0] * len(SIZE_CLASSES)
        self.latency: LatencyHistogram | None = None


class Accounting:
    """Totals and per-subject-label breakdowns; every method is O(1) and allocation-free once labelled."""

    __slots__ = (
        "_max_subjects",
        "_other",
        "_subjects",
        "dropped",
        "forwarded",
        "received",
        "received_by_priority",
        "sampled",
        "spooled",
    )

    def __init__(self, max_subjects: int = DEFAULT_MAX_SUBJECTS) -> None:
        self.received = 0
        # Indexed by Priority value (index 0 unused).
        self.received_by_priority = [0] * (len(Priority) + 1)
        self.forwarded = 0
        self.dropped = 0
        self.sampled = 0
        self.spooled = 0
        self._max_subjects = max_subjects
        self._subjects: dict[str, SubjectCounters] = {}
        self._other = SubjectCounters(OTHER_LABEL)

    def counters_for(self, subject: str) -> SubjectCounters:
        """The counters of `subject`'s label, labelling it if there is room."""
        counters = self._subjects.get(subject)
        if counters is not None:
            return counters
        if len(self._subjects) >= self._max_subjects:
            return self._other
        counters = self._subjects[subject] = SubjectCounters(subject)
        return counters

    def label_of(self, subject: str) -> str:
        """The metric label of `subject`: the subject itself, or OTHER_LABEL once the labels are used up."""
        return self.counters_for(subject).label

    def receive(self, priority: Priority) -> None:
        """Count one message received."""
        self.received += 1
        self.received_by_priority[priority] += 1

    def forward(self, subject: str, priority: Priority) -> None:
        """Count one message forwarded upstream."""
        counters = self._subjects.get(subject)
        if counters is None:
            counters = self.counters_for(subject)
        counters.forwarded[priority] += 1
        self.forwarded += 1

    def forward_many(self, groups: list[tuple[str, int, Priority]], n: int) -> None:
        """Count `n` direct forwards given as (subject, count, priority): no time spent in the sidecar, so
        they land in the first latency bucket, as `observe_latency(subject, 0.0)` would put them."""
        subjects = self._subjects
        self.received += n
        by_priority = self.received_by_priority
        for subject, k, priority in groups:
            by_priority[priority] += k
            counters = subjects.get(subject)
            if counters is None:
                counters = self.counters_for(subject)
            counters.forwarded[priority] += k
            histogram = counters.latency
            if histogram is None:
                histogram = counters.latency = LatencyHistogram()
            histogram.buckets[0] += k
            histogram.count += k
        self.forwarded += n

    def unforward(self, subject: str, priority: Priority) -> None:
        """Take back one forward: the upstream never confirmed it (it is queued again or dropped)."""
        counters = self.counters_for(subject)
        counters.forwarded[priority] -= 1
        self.forwarded -= 1

    def drop(self, subject: str, reason: str) -> None:
        """Count one message dropped for `reason`."""
        counters = self._subjects.get(subject)
        if counters is None:
            counters = self.counters_for(subject)
        dropped = counters.dropped
        dropped[reason] = dropped.get(reason, 0) + 1
        self.dropped += 1

    def record_batch(self, subjects: Iterable[str], count: int) -> None:
        """Count one upstream write of `count` messages once for each distinct label among `subjects`."""
        index = size_class_index(count)
        seen: set[str] = set()
        for subject in subjects:
            counters = self.counters_for(subject)
            if counters.label not in seen:
                seen.add(counters.label)
                counters.batches[index] += 1

    def observe_latency(self, subject: str, seconds: float) -> None:
        """Count the time a message spent in the sidecar before being written upstream."""
        counters = self._subjects.get(subject)
        if counters is None:
            counters = self.counters_for(subject)
        histogram = counters.latency
        if histogram is None:
            histogram = counters.latency = LatencyHistogram()
        histogram.observe(seconds)

    @property
    def label_count(self) -> int:
        """Distinct subject labels in use, OTHER_LABEL excluded."""
        return len(self._subjects)

    def _all(self) -> list[SubjectCounters]:
        return [*self._subjects.values(), self._other]

    def forwarded_by_subject(self) -> dict[tuple[str, str], int]:
        """Forwards keyed by (subject label, priority label); zero counts left out."""
        out: dict[tuple[str, str], int] = {}
        for counters in self._all():
            for priority in Priority:
                count = counters.forwarded[priority]
                if count:
                    out[(counters.label, priority.label)] = count
        return out

    def dropped_by_subject(self) -> dict[tuple[str, str], int]:
        """Drops keyed by (reason, subject label)."""
        out: dict[tuple[str, str], int] = {}
        for counters in self._all():
            for reason, count in counters.dropped.items():
                out[(reason, counters.label)] = count
        return out

    def dropped_by_reason(self) -> dict[str, int]:
        """Drops keyed by reason, all subjects together."""
        out: dict[str, int] = {}
        for counters in self._all():
            for reason, count in counters.dropped.items():
                out[reason] = out.get(reason, 0) + count
        return out

    def batches_by_subject(self) -> dict[tuple[str, str], int]:
        """Batches keyed by (subject label, size class)."""
        out: dict[tuple[str, str], int] = {}
        for counters in self._all():
            for index, name in enumerate(SIZE_CLASSES):
                count = counters.batches[index]
                if count:
                    out[(counters.label, name)] = count
        return out

    def latency_by_subject(self) -> dict[str, LatencyHistogram]:
        """Publish-latency histograms keyed by subject label (live objects: read, do not modify)."""
        return {c.label: c.latency for c in self._all() if c.latency is not None}
