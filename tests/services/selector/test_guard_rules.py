"""The guard's rules judge a version's live window against the previous version's: each rule
passes or fails on its own figures, and latency and classes only on enough answers."""

import math
import random

import pytest

from core.settings import Settings
from services.selector.guard_rules import (
    GuardThresholds,
    binomial_greater,
    chi2_sf,
    class_distance,
    fisher_greater,
    judge,
)
from services.selector.live import VersionStats

T = GuardThresholds()
UNIFORM = {k: 10.0 for k in range(10)}


def stats(requests=100, errors=0, p99=0.003, classes=None, streak=0):
    """``requests`` answers, the slowest 2 % between 0.9 ``p99`` and ``p99`` seconds (so the
    p99, halfway into that bucket, reads 0.95 ``p99``) and the rest at 1 ms."""
    fast = requests - max(2, requests // 50)
    return VersionStats(requests=requests, errors=errors,
                        latency={0.001: fast, 0.9 * p99: fast, p99: requests,
                                 math.inf: requests},
                        classes=UNIFORM if classes is None else classes,
                        longest_error_streak=streak)


def by_name(rules):
    assert [r.name for r in rules] == ["consecutive_errors", "error_rate", "p99_latency",
                                      "class_distribution"]
    return {r.name: r for r in rules}


def test_a_window_like_its_baseline_passes_every_rule_with_its_figures():
    rules = by_name(judge(stats(requests=500), stats(requests=500), T))
    assert all(r.passed for r in rules.values())
    assert rules["error_rate"].value == 0 and rules["p99_latency"].value == 1.0
    assert rules["class_distribution"].value == 0


def test_errors_in_a_row_break_the_fast_rule():
    rule = by_name(judge(stats(errors=5, streak=5), stats(), T))["consecutive_errors"]
    assert not rule.passed and (rule.value, rule.threshold) == (5, 5)
    assert "5 errors in a row" in rule.detail
    assert by_name(judge(stats(errors=4, streak=4), stats(), T))["consecutive_errors"].passed


def test_an_error_rate_up_by_more_than_the_threshold_and_beyond_chance_fails():
    rule = by_name(judge(stats(500, errors=15), stats(500, errors=1), T))["error_rate"]
    assert not rule.passed and rule.value == pytest.approx(0.028)
    assert "15 errors in 500 answers (3.00%) against 0.20%; p = 0.00" in rule.detail
    small = by_name(judge(stats(500, errors=5), stats(500, errors=1), T))["error_rate"]
    assert small.passed and small.value == pytest.approx(0.008)  # beyond chance, not large
    chance = by_name(judge(stats(100, errors=3), stats(100, errors=1), T))["error_rate"]
    assert chance.passed and chance.value == pytest.approx(0.02)  # large, but by chance


def test_without_a_baseline_latency_and_classes_are_not_judged():
    rules = by_name(judge(stats(errors=10), None, T))
    assert not rules["error_rate"].passed and "no baseline" in rules["error_rate"].detail
    assert rules["p99_latency"].passed and rules["p99_latency"].detail == "not judged: no baseline"
    assert rules["class_distribution"].passed


def test_a_p99_more_than_the_ratio_slower_fails_only_above_the_floor():
    slow = by_name(judge(stats(500, p99=0.1), stats(500, p99=0.03), T))["p99_latency"]
    assert not slow.passed and slow.value == pytest.approx(3.3333, abs=1e-3)
    assert "p99 95 ms against 28.5 ms" in slow.detail
    under_floor = by_name(judge(stats(500, p99=0.015), stats(500, p99=0.003), T))["p99_latency"]
    assert under_floor.passed and under_floor.value == 5.0


def test_two_classes_merged_fail_on_500_answers_and_name_the_class_and_p_value():
    even = {k: 50.0 for k in range(10)}
    merged = {**even, 4: 0.0, 6: 100.0}  # class 4 never predicted, its images called 6
    rule = by_name(judge(stats(500, classes=merged), stats(500, classes=even),
                         T))["class_distribution"]
    assert not rule.passed and rule.value == pytest.approx(0.2497, abs=1e-3)
    assert "class 4: 0.0% against 10.0%" in rule.detail or "class 6" in rule.detail
    assert "; p = 1.1e-14 (G-test, G = 86.3, 9 df)" in rule.detail
    on_100 = by_name(judge(stats(classes={**UNIFORM, 4: 0.0, 6: 20.0}), stats(),
                           T))["class_distribution"]
    assert on_100.passed and on_100.value == rule.value  # as far apart, but as likely as 1 in 20 by chance


def test_latency_and_classes_are_not_judged_on_too_few_answers():
    rules = by_name(judge(stats(requests=40, p99=1.0, classes={0: 40}), stats(), T))
    assert rules["p99_latency"].passed and rules["class_distribution"].passed
    assert rules["p99_latency"].detail == "not judged: 40 answers < 200"
    assert rules["class_distribution"].detail == "not judged: 40 answers < 50"
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


def _drawn(rng, n):
    """``n`` answers of a model predicting the ten classes equally often, as sampled."""
    counts = {k: 0.0 for k in range(10)}
    for _ in range(n):
        counts[rng.randrange(10)] += 1
    return counts


@pytest.mark.parametrize("n", [50, 100])
def test_identical_models_on_few_answers_pass_however_far_apart_sampling_puts_them(n):
    rng = random.Random(2)
    window, baseline = _drawn(rng, n), _drawn(rng, n)
    assert class_distance(window, baseline) > T.max_class_distance  # large, by chance alone
    rule = by_name(judge(stats(requests=n, classes=window),
                         stats(requests=n, classes=baseline), T))["class_distribution"]
    assert rule.passed and "p = " in rule.detail


def test_one_error_in_21_answers_is_no_significant_rise():
    rule = by_name(judge(stats(requests=21, errors=1), stats(requests=500), T))["error_rate"]
    assert rule.passed and rule.value == pytest.approx(1 / 21)
    assert "1 errors in 21 answers (4.76%) against 0.00%" in rule.detail and "p = 0.04" in rule.detail


def test_30_errors_in_500_answers_against_none_in_500_fail():
    rule = by_name(judge(stats(requests=500, errors=30), stats(requests=500), T))["error_rate"]
    assert not rule.passed and rule.value == pytest.approx(0.06)
    assert "p = " in rule.detail


def test_without_a_baseline_errors_are_judged_against_the_allowance_above_zero():
    one = by_name(judge(stats(requests=21, errors=1), None, T))["error_rate"]
    assert one.passed and "no baseline" in one.detail
    many = by_name(judge(stats(requests=100, errors=10), None, T))["error_rate"]
    assert not many.passed and many.value == pytest.approx(0.1)


def test_the_p99_is_not_judged_on_fewer_answers_than_a_p99_needs_whatever_min_requests():
    rule = by_name(judge(stats(requests=100, p99=1.0), stats(requests=100),
                         GuardThresholds(min_requests=20)))["p99_latency"]
    assert rule.passed and rule.detail.startswith("not judged: 100 answers < 200")


def test_chi_square_survival_matches_known_values():
    assert chi2_sf(3.841459, 1) == pytest.approx(0.05, rel=1e-5)
    assert chi2_sf(27.87716, 9) == pytest.approx(0.001, rel=1e-4)
    assert chi2_sf(21.66599, 9) == pytest.approx(0.01, rel=1e-4)
    assert chi2_sf(0.0, 4) == 1.0
    for x in (0.5, 4.0, 30.0, 120.0):  # even degrees of freedom have a closed form
        closed = math.exp(-x / 2) * sum((x / 2) ** i / math.factorial(i) for i in range(3))
        assert chi2_sf(x, 6) == pytest.approx(closed, rel=1e-9)


def test_the_error_tests_tails_match_their_closed_forms():
    # one error among 521 answers falls among the window's 21 with chance 21/521
    assert fisher_greater(1, 21, 0, 500) == pytest.approx(21 / 521, rel=1e-12)
    assert fisher_greater(0, 21, 3, 500) == 1.0
    assert fisher_greater(3, 3, 0, 3) == pytest.approx(1 / 20)  # C(6, 3) = 20 ways
    assert binomial_greater(1, 21, 0.01) == pytest.approx(1 - 0.99 ** 21, rel=1e-12)
    assert binomial_greater(21, 21, 0.5) == pytest.approx(0.5 ** 21, rel=1e-12)
    assert binomial_greater(1, 21, 0.0) == 0.0 and binomial_greater(0, 21, 0.0) == 1.0
