"""NATS subject patterns: `*` matches one token, a final `>` one or more; validity of a pattern.

Imports nothing from the project, so the config (which validates rule subjects) and the classifier
(which matches them) both depend on it and not on each other.
"""

from __future__ import annotations

from collections.abc import Sequence

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
