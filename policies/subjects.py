"""NATS subject wildcards (`*` one token, `>` one or more trailing) and the cached subject->rule map."""

from __future__ import annotations

from collections.abc import Sequence

from policies.config import PolicyRule, Priority
from policies.patterns import _tokens_match, pattern_error, subject_matches

__all__ = ["DEFAULT_CACHE_SIZE", "RuleEntry", "SubjectClassifier", "pattern_error", "subject_matches"]

# Classification cache bound: each generation holds at most half, so the cache never exceeds this.
DEFAULT_CACHE_SIZE = 10_000


class RuleEntry:
    """What a subject classifies to: its rule (or None) and a preallocated (Priority, rule) per priority."""

    __slots__ = ("by_priority", "default", "rule")

    def __init__(self, rule: PolicyRule | None) -> None:
        self.rule = rule
        # Indexed by Priority value, so the hot path returns a shared tuple instead of building one.
        self.by_priority: tuple[tuple[Priority, PolicyRule | None] | None, ...] = (
            None,
            *((p, rule) for p in Priority),
        )
        default = rule.priority_value if rule is not None else Priority.MEDIUM
        self.default: tuple[Priority, PolicyRule | None] = (default, rule)


class SubjectClassifier:
    """First-matching-rule lookup behind a bounded two-generation cache (at most `cache_size` subjects).

    A hit in the young generation is one dict lookup; a hit in the old one promotes the subject; when the
    young generation is full the old one is discarded. Subjects in steady use never leave the cache.
    """

    __slots__ = ("_compiled", "_generation_size", "_no_rule", "_old", "_young", "rules")

    def __init__(self, rules: Sequence[PolicyRule], cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.rules = tuple(rules)
        self._compiled = tuple((rule.subject.split("."), RuleEntry(rule)) for rule in self.rules)
        self._no_rule = RuleEntry(None)
        self._generation_size = max(1, cache_size // 2)
        self._young: dict[str, RuleEntry] = {}
        self._old: dict[str, RuleEntry] = {}

    def entry(self, subject: str) -> RuleEntry:
        """The cached classification of `subject`."""
        entry = self._young.get(subject)
        if entry is not None:
            return entry
        entry = self._old.get(subject)
        if entry is None:
            entry = self._match(subject)
        if len(self._young) >= self._generation_size:
            self._old = self._young
            self._young = {}
        self._young[subject] = entry
        return entry

    def match(self, subject: str) -> RuleEntry:
        """The classification of `subject`, without reading or filling the cache."""
        return self._match(subject)

    def _match(self, subject: str) -> RuleEntry:
        tokens = subject.split(".")
        for pattern_tokens, entry in self._compiled:
            if _tokens_match(pattern_tokens, tokens):
                return entry
        return self._no_rule

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def __contains__(self, subject: object) -> bool:
        return subject in self._young or subject in self._old
