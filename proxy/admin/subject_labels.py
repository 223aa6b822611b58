"""The bounded set of subject labels the breaker metrics use (at most metrics.maxSubjects, then _other)."""

from __future__ import annotations

from policies.accounting import OTHER_LABEL


class SubjectLabels:
    """Subject labels for breaker metrics, bounded like the engine's: at most `max_subjects`, then _other.

    A subject the engine already labels keeps its label; another subject gets one while fewer than
    `max_subjects` labels are in use. Once given, a label stays (no series churn).
    """

    def __init__(self, max_subjects: int) -> None:
        self.max_subjects = max_subjects
        self._own: set[str] = set()

    def label(self, subject: str, engine_labels: set[str]) -> str:
        """The label of `subject`, given the labels the engine's counters use."""
        if subject in engine_labels or subject in self._own:
            return subject
        # Overlaps counted twice: conservative, and O(1) for the subjects that stay folded.
        if len(self._own) + len(engine_labels) < self.max_subjects:
            self._own.add(subject)
            return subject
        return OTHER_LABEL
