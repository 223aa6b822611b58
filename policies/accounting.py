"""Message counters that reconcile, broken down by protocol role and a bounded set of subject labels.

`received == forwarded + dropped + queued + spooled` is the engine's invariant; this module holds the
plain ints. Replies and control messages are counted under fixed labels (ROLE_LABELS: `_reply`,
`_control`), never per subject, so that requests leave no series behind. Data and requests are counted
per subject for at most `max_subjects` labels; the budget follows current traffic: once it is nearly full,
`expire_idle` (driven by the engine's tick) frees the labels of subjects idle for LABEL_IDLE_S, and a subject
without a label is counted under OTHER_LABEL. Any number of subjects costs bounded memory.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from policies.batching import SIZE_CLASSES, size_class_index
from policies.config import Priority
from policies.roles import DATA, REPLY, ROLE_LABELS, Role

OTHER_LABEL = "_other"
DEFAULT_MAX_SUBJECTS = 500
# A subject label unused for this long is freed once the budget is nearly full (EXPIRE_FILL of it used).
LABEL_IDLE_S = 60.0
EXPIRE_FILL = 0.9
_ROLES = len(Role)
_PRIORITIES = len(Priority) + 1
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

    def observe(self, seconds: float, count: int = 1) -> None:
        """Count one latency (or `count` equal ones)."""
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += count
        self.count += count
        self.total += seconds * count


class SubjectCounters:
    """Counters of one label: forwards by (role, priority), drops by reason and role, batches by size."""

    __slots__ = ("batches", "dropped", "forwarded", "label", "latency", "seen")

    def __init__(self, label: str, seen: float = 0.0) -> None:
        self.label = label
        # Indexed by role * _PRIORITIES + priority value.
        self.forwarded = [0] * (_ROLES * _PRIORITIES)
        # Reason -> counts indexed by role.
        self.dropped: dict[str, list[int]] = {}
        self.batches = [0] * len(SIZE_CLASSES)
        self.latency: LatencyHistogram | None = None
        # When the label last counted something (the epoch of the engine's last tick).
        self.seen = seen


class Accounting:
    """Totals and per-label breakdowns; every method is O(1) and allocation-free once labelled."""

    __slots__ = (
        "_max_subjects",
        "_other",
        "_reasons",
        "_role_counters",
        "_subjects",
        "dropped",
        "dropped_by_role",
        "epoch",
        "forwarded",
        "forwarded_by_role",
        "freed_dropped",
        "freed_forwarded",
        "received",
        "received_by_priority",
        "received_by_role",
        "sampled",
        "spooled",
    )

    def __init__(self, max_subjects: int = DEFAULT_MAX_SUBJECTS) -> None:
        self.received = 0
        # Indexed by Priority value (index 0 unused), and by Role value.
        self.received_by_priority = [0] * _PRIORITIES
        self.received_by_role = [0] * _ROLES
        self.forwarded = 0
        self.forwarded_by_role = [0] * _ROLES
        self.dropped = 0
        self.dropped_by_role = [0] * _ROLES
        self.sampled = 0
        self.spooled = 0
        # Drops by reason, kept apart from the labels: a freed label never takes its drops with it.
        self._reasons: dict[str, int] = {}
        self.epoch = 0.0
        # What the freed labels had counted: the per-label breakdowns plus these equal the totals.
        self.freed_forwarded = 0
        self.freed_dropped = 0
        self._max_subjects = max_subjects
        self._subjects: dict[str, SubjectCounters] = {}
        self._other = SubjectCounters(OTHER_LABEL)
        # Indexed by Role value: the fixed counters of replies and control messages (None below REPLY).
        self._role_counters: list[SubjectCounters | None] = [
            SubjectCounters(ROLE_LABELS[role]) if role in ROLE_LABELS else None for role in Role
        ]

    def counters_for(self, subject: str, role: Role = DATA) -> SubjectCounters:
        """The counters of `subject`'s label for `role`, labelling it if there is room."""
        if role >= REPLY:
            return self._role_counters[role]  # type: ignore[return-value]
        counters = self._subjects.get(subject)
        if counters is not None:
            counters.seen = self.epoch
            return counters
        if len(self._subjects) >= self._max_subjects:
            return self._other
        counters = self._subjects[subject] = SubjectCounters(subject, self.epoch)
        return counters

    def label_of(self, subject: str, role: Role = DATA) -> str:
        """The metric label of `subject`: the subject, its role's label, or OTHER_LABEL (budget used up)."""
        return self.counters_for(subject, role).label

    def expire_idle(self, now: float, idle_s: float = LABEL_IDLE_S) -> int:
        """Set the epoch to `now`; once the budget is nearly full, free labels idle for `idle_s`."""
        self.epoch = now
        subjects = self._subjects
        if len(subjects) < self._max_subjects * EXPIRE_FILL:
            return 0
        idle = [label for label, counters in subjects.items() if now - counters.seen >= idle_s]
        for label in idle:
            counters = subjects.pop(label)
            self.freed_forwarded += sum(counters.forwarded)
            self.freed_dropped += sum(sum(by_role) for by_role in counters.dropped.values())
        return len(idle)

    def receive(self, priority: Priority, role: Role = DATA) -> None:
        """Count one message received."""
        self.received += 1
        self.received_by_priority[priority] += 1
        self.received_by_role[role] += 1

    def receive_many(self, priority: Priority, role: Role, k: int) -> None:
        """Count `k` messages of one priority and role received."""
        self.received += k
        self.received_by_priority[priority] += k
        self.received_by_role[role] += k

    def forward(self, subject: str, priority: Priority, role: Role = DATA, count: int = 1) -> None:
        """Count one message (or `count`) forwarded upstream."""
        if role < REPLY:
            counters = self._subjects.get(subject)
            if counters is None:
                counters = self.counters_for(subject, role)
            else:
                counters.seen = self.epoch
        else:
            counters = self._role_counters[role]  # type: ignore[assignment]
        counters.forwarded[role * _PRIORITIES + priority] += count
        self.forwarded += count
        self.forwarded_by_role[role] += count

    def forward_many(self, groups: list[tuple[str, int, Priority, Role]], n: int) -> None:
        """Count `n` direct forwards given as (subject, count, priority, role): no time spent in the
        sidecar, so they land in the first latency bucket, as `observe_latency(subject, 0.0)` would."""
        self.received += n
        self.forwarded += n
        by_priority = self.received_by_priority
        received_by_role = self.received_by_role
        forwarded_by_role = self.forwarded_by_role
        for subject, k, priority, role in groups:
            by_priority[priority] += k
            received_by_role[role] += k
            forwarded_by_role[role] += k
            counters = self.counters_for(subject, role)
            counters.forwarded[role * _PRIORITIES + priority] += k
            histogram = counters.latency
            if histogram is None:
                histogram = counters.latency = LatencyHistogram()
            histogram.buckets[0] += k
            histogram.count += k

    def unforward(self, subject: str, priority: Priority, role: Role = DATA) -> None:
        """Take back one forward: the upstream never confirmed it (it is queued again or dropped)."""
        counters = self.counters_for(subject, role)
        counters.forwarded[role * _PRIORITIES + priority] -= 1
        self.forwarded -= 1
        self.forwarded_by_role[role] -= 1

    def drop_many(self, subject: str, priority: Priority, reason: str, role: Role, k: int) -> None:
        """Count `k` messages of one group received and dropped for `reason` (a run decided in bulk)."""
        self.received += k
        self.received_by_priority[priority] += k
        self.received_by_role[role] += k
        counters = self.counters_for(subject, role)
        dropped = counters.dropped
        by_role = dropped.get(reason)
        if by_role is None:
            by_role = dropped[reason] = [0] * _ROLES
        by_role[role] += k
        reasons = self._reasons
        reasons[reason] = reasons.get(reason, 0) + k
        self.dropped += k
        self.dropped_by_role[role] += k

    def drop(self, subject: str, reason: str, role: Role = DATA) -> None:
        """Count one message dropped for `reason`."""
        counters = self.counters_for(subject, role)
        dropped = counters.dropped
        by_role = dropped.get(reason)
        if by_role is None:
            by_role = dropped[reason] = [0] * _ROLES
        by_role[role] += 1
        reasons = self._reasons
        reasons[reason] = reasons.get(reason, 0) + 1
        self.dropped += 1
        self.dropped_by_role[role] += 1

    def record_batch(self, items: Iterable[Any], count: int) -> None:
        """Count one upstream write of `count` messages once for each distinct label among `items`
        (objects with `subject` and `role`)."""
        index = size_class_index(count)
        seen: set[str] = set()
        for item in items:
            counters = self.counters_for(item.subject, item.role)
            if counters.label not in seen:
                seen.add(counters.label)
                counters.batches[index] += 1

    def observe_latency(self, subject: str, seconds: float, role: Role = DATA, count: int = 1) -> None:
        """Count the time a message (or `count` of them) spent in the sidecar before its upstream write."""
        counters = self.counters_for(subject, role)
        histogram = counters.latency
        if histogram is None:
            histogram = counters.latency = LatencyHistogram()
        histogram.observe(seconds, count)

    @property
    def label_count(self) -> int:
        """Distinct subject labels in use, OTHER_LABEL and the role labels excluded."""
        return len(self._subjects)

    def _all(self) -> list[SubjectCounters]:
        roles = [c for c in self._role_counters if c is not None]
        return [*self._subjects.values(), self._other, *roles]

    def forwarded_by_subject_role(self) -> dict[tuple[str, str, str], int]:
        """Forwards keyed by (subject label, priority label, role label); zero counts left out."""
        out: dict[tuple[str, str, str], int] = {}
        for counters in self._all():
            forwarded = counters.forwarded
            for role in Role:
                base = role * _PRIORITIES
                for priority in Priority:
                    count = forwarded[base + priority]
                    if count:
                        out[(counters.label, priority.label, role.label)] = count
        return out

    def forwarded_by_subject(self) -> dict[tuple[str, str], int]:
        """Forwards keyed by (subject label, priority label), all roles together; zero counts left out."""
        out: dict[tuple[str, str], int] = {}
        for (label, priority, _), count in self.forwarded_by_subject_role().items():
            out[(label, priority)] = out.get((label, priority), 0) + count
        return out

    def dropped_by_subject_role(self) -> dict[tuple[str, str, str], int]:
        """Drops keyed by (reason, subject label, role label)."""
        out: dict[tuple[str, str, str], int] = {}
        for counters in self._all():
            for reason, by_role in counters.dropped.items():
                for role in Role:
                    if by_role[role]:
                        out[(reason, counters.label, role.label)] = by_role[role]
        return out

    def dropped_by_subject(self) -> dict[tuple[str, str], int]:
        """Drops keyed by (reason, subject label), all roles together."""
        out: dict[tuple[str, str], int] = {}
        for (reason, label, _), count in self.dropped_by_subject_role().items():
            out[(reason, label)] = out.get((reason, label), 0) + count
        return out

    def dropped_by_reason(self) -> dict[str, int]:
        """Drops keyed by reason, all subjects together."""
        return dict(self._reasons)

    def by_role(self) -> dict[str, dict[str, int]]:
        """Received, forwarded and dropped per role label."""
        return {
            role.label: {
                "received": self.received_by_role[role],
                "forwarded": self.forwarded_by_role[role],
                "dropped": self.dropped_by_role[role],
            }
            for role in Role
        }

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
