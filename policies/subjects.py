"""NATS subject wildcards (`*` one token, `>` one or more trailing) and the cached subject->rule map."""

from __future__ import annotations

from collections.abc import Sequence

from policies.config import PolicyRule, Priority

# Classification cache bound: each generation holds at most half, so the cache never exceeds this.
DEFAULT_CACHE_SIZE = 10_000
_FORBIDDEN_CHARS = frozenset(" \t\r\n")


def pattern_error(pattern: str) -> str | None:
    """Why `pattern` is not a valid NATS subject pattern, or None when it is."""
    if not pattern:
        return "subject pattern is empty"
    if any(ch in _FORBIDDEN_CHARS for ch in pattern):
        return f"subject pattern {pattern!r} contains whitespace"
    tokens = pattern.split(".")
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if not token:
            return f"subject pattern {pattern!r} has an empty token"
        if token == ">" and i != last:
            return f"subject pattern {pattern!r}: '>' must be the last token"
        if token not in ("*", ">") and ("*" in token or ">" in token):
            return f"subject pattern {pattern!r}: wildcards must be whole tokens"
    return None


def subject_matches(pattern: str, subject: str) -> bool:
    """True when `subject` matches the NATS `pattern` (`*` matches one token, a final `>` one or more)."""
    return _tokens_match(pattern.split("."), subject.split("."))


def _tokens_match(pattern_tokens: Sequence[str], subject_tokens: Sequence[str]) -> bool:
    n = len(subject_tokens)
    for i, token in enumerate(pattern_tokens):
        if token == ">":
            return n > i
        if i >= n or (token != "*" and token != subject_tokens[i]):
            return False
    return n == len(pattern_tokens)


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
