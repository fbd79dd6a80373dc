"""The guard's rules judge a version's live window against the previous version's: each rule
passes or fails on its own figures, and latency and classes only on enough answers."""

import math

import pytest

from core.settings import Settings
from services.selector.guard_rules import GuardThresholds, class_distance, judge
from services.selector.live import VersionStats

T = GuardThresholds()
UNIFORM = {k: 10.0 for k in range(10)}


def stats(requests=100, errors=0, p99=0.003, classes=None, streak=0):
    """``requests`` answers, the slowest 2 % at ``p99`` seconds and the rest at 1 ms."""
    fast = requests - max(2, requests // 50)
    return VersionStats(requests=requests, errors=errors,
                        latency={0.001: fast, p99: requests, math.inf: requests},
                        classes=UNIFORM if classes is None else classes,
                        longest_error_streak=streak)


def by_name(rules):
    assert [r.name for r in rules] == ["consecutive_errors", "error_rate", "p99_latency",
                                      "class_distribution"]
    return {r.name: r for r in rules}


def test_a_window_like_its_baseline_passes_every_rule_with_its_figures():
    rules = by_name(judge(stats(), stats(), T))
    assert all(r.passed for r in rules.values())
    assert rules["error_rate"].value == 0 and rules["p99_latency"].value == 1.0
    assert rules["class_distribution"].value == 0


def test_errors_in_a_row_break_the_fast_rule():
    rule = by_name(judge(stats(errors=5, streak=5), stats(), T))["consecutive_errors"]
    assert not rule.passed and (rule.value, rule.threshold) == (5, 5)
    assert "5 errors in a row" in rule.detail
    assert by_name(judge(stats(errors=4, streak=4), stats(), T))["consecutive_errors"].passed


def test_an_error_rate_up_by_more_than_the_threshold_fails():
    rule = by_name(judge(stats(errors=3), stats(errors=1), T))["error_rate"]
    assert not rule.passed and rule.value == pytest.approx(0.02)
    assert "3 errors in 100 answers (3.00%) against 1.00%" in rule.detail
    assert by_name(judge(stats(errors=2), stats(errors=1), T))["error_rate"].passed


def test_without_a_baseline_errors_are_judged_against_none():
    rules = by_name(judge(stats(errors=2), None, T))
    assert not rules["error_rate"].passed and "no baseline" in rules["error_rate"].detail
    assert rules["p99_latency"].passed and rules["p99_latency"].detail == "not judged: no baseline"
    assert rules["class_distribution"].passed


def test_a_p99_more_than_the_ratio_slower_fails_only_above_the_floor():
    slow = by_name(judge(stats(p99=0.1), stats(p99=0.03), T))["p99_latency"]
    assert not slow.passed and slow.value == pytest.approx(3.3333, abs=1e-3)
    assert "p99 100 ms against 30 ms" in slow.detail
    under_floor = by_name(judge(stats(p99=0.015), stats(p99=0.003), T))["p99_latency"]
    assert under_floor.passed and under_floor.value == 5.0


def test_predicted_classes_that_moved_fail_and_name_the_class():
    shifted = {**UNIFORM, 4: 0.0, 6: 20.0}  # class 4 never predicted, its images called 6
    rule = by_name(judge(stats(classes=shifted), stats(), T))["class_distribution"]
    assert not rule.passed and rule.value == pytest.approx(0.2497, abs=1e-3)
    assert "class 4: 0.0% against 10.0%" in rule.detail or "class 6" in rule.detail


def test_latency_and_classes_are_not_judged_on_too_few_answers():
    rules = by_name(judge(stats(requests=40, p99=1.0, classes={0: 40}), stats(), T))
    assert rules["p99_latency"].passed and rules["class_distribution"].passed
    assert rules["p99_latency"].detail == "not judged: 40 answers < 50"
    baseline_short = by_name(judge(stats(classes={0: 100}), stats(classes={1: 20}), T))
    assert baseline_short["class_distribution"].detail == "not judged: baseline: 20 answers < 50"


def test_class_distance_is_jensen_shannon_base_2():
    assert class_distance({0: 5, 1: 5}, {0: 50, 1: 50}) == 0.0
    assert class_distance({0: 1}, {1: 1}) == pytest.approx(1.0)
    # (1/2, 1/2) against (1, 0): their mean is (3/4, 1/4)
    divergence = (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
                  + math.log2(1 / 0.75)) / 2
    assert class_distance({0: 1, 1: 1}, {0: 3}) == pytest.approx(math.sqrt(divergence))
    assert class_distance({}, {0: 1}) == 0.0


def test_thresholds_come_from_the_settings():
    settings = Settings(guard_max_p99_ratio=3, guard_p99_floor_ms=50, guard_min_requests=10,
                        guard_consecutive_errors=2)
    t = GuardThresholds.from_settings(settings)
    assert (t.max_p99_ratio, t.p99_floor_seconds, t.min_requests, t.consecutive_errors) == \
        (3, 0.05, 10, 2)
    assert t.max_error_rate_increase == 0.01 and t.max_class_distance == 0.15
