"""Subject wildcard matching, rule validation, classification and its bounded cache."""

from __future__ import annotations

import msgspec
import pytest

from policies.config import BackpressureConfig, PolicyRule, Priority
from policies.subjects import SubjectClassifier, pattern_error, subject_matches
from tests.policies.fakes import Clock, make_engine


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("kpi.orders", "kpi.orders", True),
        ("kpi.orders", "kpi.orders.eu", False),
        ("kpi.orders", "kpi", False),
        ("kpi.*", "kpi.orders", True),
        ("kpi.*", "kpi.orders.eu", False),
        ("kpi.*", "kpi", False),
        ("*.orders", "kpi.orders", True),
        ("kpi.*.eu", "kpi.orders.eu", True),
        ("kpi.*.eu", "kpi.orders.us", False),
        ("kpi.>", "kpi.orders", True),
        ("kpi.>", "kpi.orders.eu.paris", True),
        ("kpi.>", "kpi", False),
        (">", "anything.at.all", True),
        ("*", "one", True),
        ("*", "one.two", False),
        ("kpi.*.>", "kpi.a.b", True),
        ("kpi.*.>", "kpi.a", False),
        ("kpi.order*", "kpi.orders", False),
    ],
)
def test_subject_matches(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected


@pytest.mark.parametrize(
    "pattern",
    ["", "kpi..orders", "kpi.>.eu", "kpi.ord*", "kpi.>x", ".kpi", "kpi.", "kpi orders", "kpi.\torders"],
)
def test_invalid_patterns_are_refused(pattern: str) -> None:
    assert pattern_error(pattern) is not None
    with pytest.raises(ValueError):
        PolicyRule(subject=pattern)
    with pytest.raises(msgspec.ValidationError, match=r"\$\[0\]"):
        msgspec.convert([{"subject": pattern}], list[PolicyRule])


@pytest.mark.parametrize("pattern", ["kpi", "kpi.orders", "kpi.*", "kpi.>", "*", ">", "kpi.*.eu.>"])
def test_valid_patterns_are_accepted(pattern: str) -> None:
    assert pattern_error(pattern) is None
    assert PolicyRule(subject=pattern).subject == pattern


RULES = [
    PolicyRule(subject="kpi.payment.>", priority="critical"),
    PolicyRule(subject="kpi.*.debug", priority="low"),
    PolicyRule(subject="kpi.payment.debug", priority="high"),  # shadowed: first match wins
    PolicyRule(subject="kpi.analytics.*", priority="high"),
]


@pytest.mark.parametrize(
    ("subject", "header", "priority", "rule_index"),
    [
        ("kpi.payment.conversion", None, Priority.CRITICAL, 0),
        ("kpi.payment.debug", None, Priority.CRITICAL, 0),
        ("kpi.marketing.debug", None, Priority.LOW, 1),
        ("kpi.analytics.result", None, Priority.HIGH, 3),
        ("kpi.other", None, Priority.MEDIUM, None),
        # The header wins over the rule, whatever its case; the rule is still returned.
        ("kpi.payment.conversion", "low", Priority.LOW, 0),
        ("kpi.other", "CRITICAL", Priority.CRITICAL, None),
        ("kpi.other", "High", Priority.HIGH, None),
        ("kpi.other", "hIgH", Priority.HIGH, None),
        ("kpi.other", " low ", Priority.LOW, None),
        # Invalid header values are ignored.
        ("kpi.payment.conversion", "urgent", Priority.CRITICAL, 0),
        ("kpi.other", "", Priority.MEDIUM, None),
        ("kpi.marketing.debug", "4", Priority.LOW, 1),
    ],
)
def test_classify(subject: str, header: str | None, priority: Priority, rule_index: int | None) -> None:
    engine = make_engine(Clock(), RULES)
    got_priority, got_rule = engine.classify(subject, header)
    assert got_priority is priority
    assert got_rule is (None if rule_index is None else RULES[rule_index])


def test_classify_returns_shared_tuples_on_cache_hits() -> None:
    engine = make_engine(Clock(), RULES)
    first = engine.classify("kpi.payment.x", None)
    assert engine.classify("kpi.payment.x", None) is first
    assert engine.classify("kpi.payment.x", "low") is engine.classify("kpi.payment.x", "LOW")


def test_cache_is_bounded_at_its_limit() -> None:
    classifier = SubjectClassifier(RULES, cache_size=10_000)
    for i in range(10_000):
        classifier.entry(f"kpi.s{i}")
    assert len(classifier) <= 10_000
    for i in range(10_000, 50_000):
        classifier.entry(f"kpi.s{i}")
        assert len(classifier) <= 10_000
    assert len(classifier) > 5_000  # it still caches


def test_subject_in_steady_use_stays_cached() -> None:
    classifier = SubjectClassifier(RULES, cache_size=100)
    for i in range(10_000):
        classifier.entry("kpi.payment.hot")
        classifier.entry(f"kpi.cold{i}")
        assert "kpi.payment.hot" in classifier


def test_cached_answer_equals_uncached_answer() -> None:
    classifier = SubjectClassifier(RULES, cache_size=4)
    subjects = [
        f"kpi.{team}.{kind}" for team in ("payment", "marketing", "analytics") for kind in ("a", "debug")
    ]
    expected = {s: SubjectClassifier(RULES, cache_size=4).entry(s).rule for s in subjects}
    for _ in range(5):
        for s in subjects:
            assert classifier.entry(s).rule is expected[s]


def test_update_config_with_rules_resets_the_cache() -> None:
    clock = Clock()
    engine = make_engine(clock, RULES)
    assert engine.classify("kpi.payment.x", None)[0] is Priority.CRITICAL
    engine.update_config(engine.config, [PolicyRule(subject="kpi.payment.>", priority="low")])
    assert engine.classify("kpi.payment.x", None)[0] is Priority.LOW
    # Without rules, the rules (and their cache) are kept.
    engine.update_config(BackpressureConfig())
    assert engine.classify("kpi.payment.x", None)[0] is Priority.LOW
