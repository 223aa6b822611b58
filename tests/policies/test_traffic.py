"""Busiest-subject tracking for the critical-level breakers: windows, ranking, bound."""

from __future__ import annotations

from policies.traffic import SubjectTraffic


def test_top_ranks_by_count_over_both_windows() -> None:
    traffic = SubjectTraffic(window_s=1.0, now=0.0)
    for subject, count in {"a": 3, "b": 5, "c": 1}.items():
        for _ in range(count):
            traffic.add(subject)
    traffic.rotate(1.0)
    for _ in range(4):
        traffic.add("a")
    assert traffic.top(2) == ["a", "b"]  # a: 3 + 4
    assert traffic.top(10) == ["a", "b", "c"]


def test_windows_rotate_and_a_long_gap_forgets_everything() -> None:
    traffic = SubjectTraffic(window_s=1.0, now=0.0)
    traffic.add("a")
    traffic.rotate(0.5)
    assert traffic.top(1) == ["a"]
    traffic.rotate(1.0)
    traffic.rotate(2.0)
    assert traffic.top(1) == []
    traffic.add("b")
    traffic.rotate(10.0)
    assert traffic.top(1) == []


def test_tracked_subjects_are_bounded_per_window() -> None:
    traffic = SubjectTraffic(window_s=1.0, now=0.0, max_tracked=100)
    for i in range(10_000):
        traffic.add(f"s{i}")
    assert len(traffic) == 100
    traffic.add("s0")  # already tracked subjects still count
    assert traffic.top(1) == ["s0"]
    traffic.rotate(1.0)
    traffic.add("late")  # a new window has room again
    assert "late" in traffic.top(200)
    assert len(traffic) <= 200
